"""The SQLite file behind the store: connections, pragmas, schema migrations, and the `Store` facade.

One file holds API keys (hashed) and the usage ledger. It is opened in WAL mode with
`synchronous=FULL`, so a committed ledger row survives a process crash and a power cut, and readers
(key checks on every request) never wait for a writer.

Concurrency: each thread gets its own connection (SQLite connections must not be used by two threads at
once, and separate connections let WAL readers run in parallel). Several processes may open the same
file; writers queue on SQLite's lock through `busy_timeout` and take it up front with `BEGIN IMMEDIATE`,
which avoids the deadlock a deferred read-then-write transaction can hit.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

from lastrank.errors import LastrankError
from lastrank.store import keys as _keys
from lastrank.store import ledger as _ledger
from lastrank.store.keys import KeyRecord
from lastrank.store.ledger import UsageRow

DEFAULT_BUSY_TIMEOUT_S = 30.0

# Migration N (1-based) takes the schema from version N-1 to N. Append only; never edit a released one.
MIGRATIONS: list[str] = [
    # 1: keys and the usage ledger
    """
    CREATE TABLE api_keys (
        id                   TEXT PRIMARY KEY,   -- public id, part of the plaintext key
        name                 TEXT NOT NULL,
        secret_hash          BLOB NOT NULL,      -- sha256 of the plaintext key; the key itself is never stored
        created_at           TEXT NOT NULL,      -- UTC, ISO 8601
        revoked_at           TEXT,
        requests_per_minute  INTEGER,
        documents_per_minute INTEGER
    );
    -- a name may be reused once the key that held it is revoked
    CREATE UNIQUE INDEX api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;

    CREATE TABLE usage (
        request_id    TEXT PRIMARY KEY,          -- unique: a retried insert never bills twice
        key_id        TEXT,                      -- NULL when the server runs without keys
        model         TEXT NOT NULL,
        route         TEXT NOT NULL,
        dialect       TEXT NOT NULL,
        documents     INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        blocks        INTEGER NOT NULL,
        status        INTEGER NOT NULL,
        latency_ms    REAL NOT NULL,
        cost_nano_usd INTEGER NOT NULL,          -- integer nano-dollars so sums are exact
        created_at    TEXT NOT NULL              -- UTC, ISO 8601 with a fixed width: sorts as text
    );
    CREATE INDEX usage_created ON usage(created_at);
    CREATE INDEX usage_key_created ON usage(key_id, created_at);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(LastrankError):
    """The database file cannot be opened or is not one this version understands."""

    type = "store_error"


def default_db_path() -> Path:
    """`<user data dir>/lastrank.db`, e.g. ~/.local/share/lastrank/lastrank.db on Linux."""
    import platformdirs

    return Path(platformdirs.user_data_dir("lastrank", appauthor=False)) / "lastrank.db"


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced (the base class cannot)."""


class Store:
    """API keys and the usage ledger in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        if path is None:
            path = default_db_path()
        if str(path) == ":memory:" or str(path).startswith("file:"):
            # every thread has its own connection, so an in-memory database would be one per thread
            raise StoreError("the store needs a file path (':memory:' and URIs are not supported)")
        self.path = Path(path).expanduser()
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()  # for close(); dead threads drop theirs
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder for the database {self.path}: {e}") from e
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ---- connections -------------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,  # autocommit; transactions are explicit (BEGIN IMMEDIATE)
                check_same_thread=False,  # only so close() may close it from another thread
                factory=_Connection,
            )
            conn.execute("PRAGMA synchronous=FULL")  # per connection: fsync the WAL on every commit
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        if os.getpid() != self._pid:
            # a forked child must not reuse its parent's connections (nor its lock, which may be held)
            self._lock = threading.Lock()
            self._local = threading.local()
            self._all = weakref.WeakSet()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.add(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the lock is taken up front, committed (and fsynced) on exit."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # another writer held the file for all of busy_timeout
            raise StoreError(f"cannot write to the database {self.path}: {e}") from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # nothing of a failed transaction may stay behind
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection this store opened, in any thread. The store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---- schema ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        conn = self._conn()
        # journal_mode is stored in the file; switching it needs a moment alone with the file, and SQLite
        # does not always run the busy handler for it, so two processes starting together retry here.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise StoreError(f"cannot open the database {self.path}: {e}") from e
                if time.monotonic() > deadline:
                    raise StoreError(f"the database {self.path} stayed locked: {e}") from e
                time.sleep(0.05)
            except sqlite3.DatabaseError as e:  # e.g. "file is not a database"
                raise StoreError(f"cannot open the database {self.path}: {e}") from e
        if str(mode).lower() != "wal":
            raise StoreError(f"the database {self.path} cannot use WAL mode (got {mode!r}); is it on a network drive?")
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")  # a second process opening a fresh file waits, then sees our work
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database {self.path} has schema version {version}, newer than this lastrank "
                    f"understands ({SCHEMA_VERSION}); upgrade lastrank"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _split_sql(MIGRATIONS[number - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")  # inside the transaction: atomic with the DDL
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # ---- keys --------------------------------------------------------------------------------------

    def create_key(
        self, name: str, requests_per_minute: int | None = None, documents_per_minute: int | None = None
    ) -> tuple[KeyRecord, str]:
        """A new key. Returns its record and the plaintext, which is not stored and cannot be shown again."""
        name = _keys.check_name(name)
        rpm = _keys.check_limit("requests_per_minute", requests_per_minute)
        dpm = _keys.check_limit("documents_per_minute", documents_per_minute)
        with self._write() as conn:
            return _keys.create_key(conn, name, rpm, dpm)

    def verify_key(self, plaintext: str) -> KeyRecord | None:
        """The active key this plaintext belongs to; None for unknown, malformed or revoked keys."""
        return _keys.verify_key(self._conn(), plaintext)

    def get_key(self, id_or_name: str) -> KeyRecord:
        """A key by id, displayed prefix, or active name (raises NotFoundError)."""
        return _keys.get_key(self._conn(), id_or_name)

    def list_keys(self, include_revoked: bool = True) -> list[KeyRecord]:
        return _keys.list_keys(self._conn(), include_revoked)

    def revoke_key(self, id_or_name: str) -> KeyRecord:
        """Revoke by id, displayed prefix or active name; revoking a revoked key (by id) changes nothing."""
        with self._write() as conn:
            return _keys.revoke_key(conn, id_or_name)

    def has_active_keys(self) -> bool:
        return _keys.has_active_keys(self._conn())

    # ---- ledger ------------------------------------------------------------------------------------

    def record_usage(self, row: UsageRow) -> bool:
        """Write one ledger row; committed and fsynced when this returns.

        Returns False (and writes nothing) when a row with this request_id already exists.
        """
        if not isinstance(row, UsageRow):
            raise TypeError(f"record_usage takes a UsageRow, got {type(row).__name__}")
        with self._write() as conn:
            return _ledger.insert(conn, row)

    def get_usage(self, request_id: str) -> UsageRow | None:
        return _ledger.get(self._conn(), request_id)

    def list_usage(
        self, key: str | None = None, since: date | datetime | str | None = None, limit: int | None = None
    ) -> list[UsageRow]:
        """Ledger rows, oldest first, optionally for one key (id, prefix or name) and from a day on."""
        conn = self._conn()
        return _ledger.list_rows(conn, _key_ids(conn, key), _ledger.since_bound(since), limit)

    def count_usage(self, key: str | None = None, since: date | datetime | str | None = None) -> int:
        conn = self._conn()
        return _ledger.count(conn, _key_ids(conn, key), _ledger.since_bound(since))

    def usage_summary(self, key: str | None = None, since: date | datetime | str | None = None) -> list[dict]:
        """Totals per key and UTC day, ordered by day then key.

        `key` is a key id, displayed prefix, or name (a name covers every key that ever had it, so a rotated
        key's history stays together). `since` is a date, a "YYYY-MM-DD" string (UTC day, inclusive), or
        an aware datetime. Each dict: day, key_id, key_name, requests, errors (status >= 400), documents,
        prompt_tokens, blocks, cost_usd.
        """
        conn = self._conn()
        return _ledger.summary(conn, _key_ids(conn, key), _ledger.since_bound(since))


def _key_ids(conn: sqlite3.Connection, key: str | None) -> list[str] | None:
    return None if key is None else _keys.resolve_ids_for_usage(conn, key)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (ours: no semicolons inside literals or triggers).

    Not `executescript`: it commits any open transaction first, and a migration must be atomic with the
    `user_version` bump.
    """
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
