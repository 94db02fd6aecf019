"""The SQLite backend of the store (`Store`): connections, pragmas, schema migrations. What the store
does with them is in base.py, shared with the PostgreSQL backend (postgres.py).

One file holds API keys (hashed), the usage ledger, the refusal counters and the rate-limit buckets
(which the API uses only from a shared PostgreSQL store; one server process keeps them in memory). It is
opened in WAL mode with `synchronous=FULL`, so a committed ledger row survives a process crash and a power
cut, and readers (key checks on every request) never wait for a writer.

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
from pathlib import Path

from lastrank.store import schema
from lastrank.store.base import BaseStore, StoreError, StoreUnavailableError

DEFAULT_BUSY_TIMEOUT_S = 30.0
# SQLite's primary result codes that mean "cannot be used just now", not a bug in the SQL: busy/locked past
# busy_timeout, read-only (file permissions, a moved file), I/O error, disk full, cannot open, lock protocol.
_UNAVAILABLE_CODES = {5, 6, 7, 8, 10, 13, 14, 15}
RETRY_AFTER_S = 2.0


def _unavailable(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    return isinstance(e, sqlite3.OperationalError) and code is not None and (code & 0xFF) in _UNAVAILABLE_CODES
SCHEMA_VERSION = schema.schema_version()


def default_db_path() -> Path:
    """`<user data dir>/lastrank.db`, e.g. ~/.local/share/lastrank/lastrank.db on Linux."""
    import platformdirs

    return Path(platformdirs.user_data_dir("lastrank", appauthor=False)) / "lastrank.db"


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced (the base class cannot)."""


class Store(BaseStore):
    """API keys, the usage ledger, refusal counts and rate buckets in one SQLite file. Safe to share
    between threads and processes on one machine."""

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        if path is None:
            path = default_db_path()
        if str(path) == ":memory:" or str(path).startswith("file:"):
            # every thread has its own connection, so an in-memory database would be one per thread
            raise StoreError("the store needs a file path (':memory:' and URIs are not supported)")
        super().__init__()
        self.path = Path(path).expanduser()
        self.location = str(self.path)
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
            self._file_id = self._stat()
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
            if _unavailable(e):  # e.g. a new worker thread's first connection after the folder was deleted
                raise StoreUnavailableError(f"cannot open the database {self.path}: {e}",
                                            retry_after=RETRY_AFTER_S) from e
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

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        """The file this store opened is still at its path. SQLite keeps writing to a deleted (or replaced)
        file through the connections it has open, so without this a deleted folder would silently swallow
        ledger rows of requests answered 200. One stat: microseconds next to a commit's fsync."""
        if self._stat() != self._file_id:
            raise StoreUnavailableError(
                f"the database {self.path} was deleted, moved or replaced while this process had it open; "
                "restore it and restart", retry_after=RETRY_AFTER_S)

    def _unavailable_error(self, e: sqlite3.Error, doing: str) -> StoreUnavailableError:
        return StoreUnavailableError(f"cannot {doing} the database {self.path}: {e}", retry_after=RETRY_AFTER_S)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn()
        except sqlite3.Error as e:
            if _unavailable(e):
                raise self._unavailable_error(e, "read") from e
            raise

    @contextmanager
    def _write(self, *, durable: bool = True, lock: str | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction: the lock is taken up front, committed (and fsynced) on exit.

        BEGIN IMMEDIATE takes the database's one write lock, so `lock` needs nothing more here, and every
        commit is fsynced (synchronous=FULL) whether or not `durable` asks for it.
        """
        self._check_file()
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # e.g. another writer held the file for all of busy_timeout
            raise self._unavailable_error(e, "write to") from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # nothing of a failed transaction may stay behind
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error) and _unavailable(e):  # a failed COMMIT left nothing behind either
                raise self._unavailable_error(e, "write to") from e
            raise

    def _clock(self, conn) -> float:
        return time.time()

    def check_available(self) -> None:
        self._check_file()
        super().check_available()

    def _close_connections(self) -> None:
        """Close every connection this store opened, in any thread."""
        with self._lock:
            self._closed = True
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local = threading.local()

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
            latest = schema.schema_version()
            if version > latest:
                raise StoreError(
                    f"the database {self.path} has schema version {version}, newer than this lastrank "
                    f"understands ({latest}); upgrade lastrank"
                )
            for number in range(version + 1, latest + 1):
                for statement in schema.render(schema.MIGRATIONS[number - 1], "sqlite"):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")  # inside the transaction: atomic with the DDL
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]
