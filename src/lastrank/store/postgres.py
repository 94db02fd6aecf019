"""The PostgreSQL backend of the store (`PostgresStore`), for several server processes or machines
sharing one set of keys, one ledger, one set of refusal counts and one set of rate-limit buckets.

    store = open_store("postgresql://user:password@host:5432/lastrank")   # or PostgresStore(url)

What the store does is base.py, the same code the SQLite backend runs; this file supplies connections
(a psycopg 3 pool, autocommit; each write is an explicit transaction), the schema version (the one-row
table `lastrank_schema`) and the concurrency rules:

- Exactly once across processes: the ledger's primary key is the request id and the insert is
  `ON CONFLICT (request_id) DO NOTHING`; a second insert of the same id, from any connection, waits for
  the first to commit and then writes nothing. A ledger row is committed with `synchronous_commit` on
  (forced on for the session if the server's default is off or local) before `record_usage` returns.
- Key writes take `LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE` (other key writers wait; readers,
  i.e. every request's key check, do not), so "the name is free" cannot race, as SQLite's write lock
  guarantees there.
- Rate buckets: `SELECT ... FOR UPDATE` on the bucket rows, with the database server's clock.
- Migrations run inside one transaction under a transaction-scoped advisory lock: replicas starting
  together migrate once, and a failed migration leaves nothing behind (DDL is transactional here).

The URL may carry any libpq parameter, e.g. `?options=-csearch_path%3Dlastrank` to keep the tables in
their own schema, or `sslmode=require`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from lastrank.store import schema
from lastrank.store.base import BaseStore, StoreError, StoreUnavailableError

log = logging.getLogger("lastrank.store")

DEFAULT_POOL_SIZE = 8  # connections per process; a server's worker threads share them
# To connect, and to wait for a free pooled connection: a server that cannot be reached is a 503 this soon.
# The URL's own `connect_timeout` (libpq's parameter, whole seconds) overrides it.
DEFAULT_TIMEOUT_S = 3.0
# While the server cannot be reached, requests fail at once (no pool wait) and one of them (or /ready)
# tries a fresh connection this often; the first that succeeds brings the store back.
PROBE_INTERVAL_S = 0.5
RETRY_AFTER_S = 2.0
# pg_advisory_xact_lock key for migrations: b"lastrank" as a big-endian 64-bit integer
_MIGRATION_LOCK = int.from_bytes(b"lastrank", "big")
URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


@lru_cache(maxsize=256)
def _to_pyformat(sql: str) -> str:
    """`?` placeholders (what sqlite3 takes, and what the shared SQL is written with) to psycopg's `%s`."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Conn:
    """A psycopg connection that takes `?` placeholders, as the shared SQL in keys.py etc. is written."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, params=()):
        return self.raw.execute(_to_pyformat(sql), params)


def _import_psycopg():
    try:
        import psycopg
        import psycopg_pool
    except ImportError as e:
        raise StoreError(
            f"a postgresql:// store needs psycopg 3 and psycopg-pool ({e}); install them with "
            "pip install 'psycopg[binary,pool]>=3.2' (in a lastrank checkout: pip install -e '.[postgresql]')"
        ) from e
    return psycopg, psycopg_pool


class PostgresStore(BaseStore):
    """API keys, the usage ledger, refusal counts and rate buckets in a PostgreSQL database. Safe to share
    between threads, processes and machines."""

    shared_rate_limits = True
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, timeout_s: float | None = None):
        """timeout_s: to connect and to wait for a pooled connection; None: the URL's connect_timeout, else
        DEFAULT_TIMEOUT_S."""
        super().__init__()
        self._psycopg, self._psycopg_pool = _import_psycopg()
        self.url = url
        self.location = redact(url)
        self.path = self.location  # what messages written for the SQLite file show
        self._password = None
        try:
            params = self._psycopg.conninfo.conninfo_to_dict(url)
        except self._psycopg.Error as e:
            raise StoreError(f"cannot use the PostgreSQL store {self.location}: {self._one_line(str(e))}") from e
        self._password = params.get("password") or None
        if timeout_s is None:
            timeout_s = DEFAULT_TIMEOUT_S
            if params.get("connect_timeout"):
                try:
                    timeout_s = float(params["connect_timeout"])
                except ValueError:
                    raise StoreError(f"the PostgreSQL store {self.location} has connect_timeout="
                                     f"{params['connect_timeout']!r}; it takes whole seconds") from None
        self.pool_size = int(pool_size)
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._pool = None
        self._pid = os.getpid()
        self._closed = False
        # Why the server cannot be reached, while it cannot (None: it could at the last try).
        self._down: str | None = None
        self._next_probe = 0.0
        self._probe_lock = threading.Lock()
        self._migrate()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # ---- connections -------------------------------------------------------------------------------

    def _one_line(self, text: str) -> str:
        """libpq's message on one line (it puts a hint on a second), without the password, should it echo it."""
        text = " ".join(str(text).split())
        if self._password:
            text = text.replace(self._password, "***")
        return redact(text)

    def _connect_error(self, e: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(f"cannot use the PostgreSQL store {self.location}: {self._one_line(str(e))}",
                                     retry_after=RETRY_AFTER_S)

    @property
    def _connect_timeout(self) -> int:
        return max(2, round(self.timeout_s))  # libpq takes whole seconds and treats 1 as 2

    def _configure(self, conn) -> None:
        # A ledger row must be on disk when record_usage returns; keep a stricter server setting as it is.
        if conn.execute("SHOW synchronous_commit").fetchone()[0] in ("off", "local"):
            conn.execute("SET synchronous_commit = on")

    def _get_pool(self):
        if self._closed:
            raise StoreError("the store is closed")
        if os.getpid() != self._pid:
            # a forked child must not use its parent's sockets (nor the pool's threads, which it lacks)
            self._lock = threading.Lock()
            self._probe_lock = threading.Lock()  # another thread of the parent may have held it at the fork
            self._pool = None
            self._pid = os.getpid()
        with self._lock:
            if self._pool is None:
                pool_cls = self._psycopg_pool.ConnectionPool
                self._pool = pool_cls(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs={"autocommit": True, "connect_timeout": self._connect_timeout},
                    configure=self._configure,
                    check=pool_cls.check_connection,  # a server restart must not hand out dead connections
                    timeout=self.timeout_s,
                    open=False,
                    name="lastrank-store",
                )
                self._pool.open(wait=False)
            return self._pool

    # ---- an unreachable server: fail fast, probe, recover ------------------------------------------

    def _probe(self) -> bool:
        """One fresh connection, outside the pool: does the server answer? Marks the store down if not."""
        self._next_probe = time.monotonic() + PROBE_INTERVAL_S
        try:
            self._psycopg.connect(self.url, autocommit=True, connect_timeout=self._connect_timeout).close()
        except self._psycopg.Error as e:
            self._mark_down(self._one_line(str(e)))
            return False
        return True

    def _mark_down(self, reason: str) -> None:
        with self._lock:
            was_down = self._down is not None
            self._down = f"the PostgreSQL store {self.location} cannot be reached: {reason}"
            self._next_probe = time.monotonic() + PROBE_INTERVAL_S
        if not was_down:
            log.warning("%s; answering 503 until it can", self._down)

    def _recover(self) -> None:
        """The server answers again: a fresh pool (the old one may be sleeping in its reconnect back-off,
        which grows to many seconds)."""
        with self._lock:
            old, self._pool = self._pool, None
            self._down = None
        log.warning("the PostgreSQL store %s answers again", self.location)
        if old is not None and self._pid == os.getpid():
            threading.Thread(target=old.close, kwargs={"timeout": 1.0}, name="lastrank-store-close", daemon=True).start()

    def _while_down(self) -> None:
        """While the server is known to be unreachable: fail at once, except for one caller every
        PROBE_INTERVAL_S, which tries a fresh connection and, if it works, brings the store back."""
        down = self._down
        if down is None:
            return
        if time.monotonic() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            raise StoreUnavailableError(down, retry_after=RETRY_AFTER_S)
        try:
            if self._down is None:  # another caller brought it back meanwhile
                return
            if not self._probe():
                raise StoreUnavailableError(self._down, retry_after=RETRY_AFTER_S)
            self._recover()
        finally:
            self._probe_lock.release()

    def check_available(self) -> None:
        self._get_pool()
        self._while_down()
        super().check_available()

    @contextmanager
    def _connection(self) -> Iterator:
        psycopg, psycopg_pool = self._psycopg, self._psycopg_pool
        self._get_pool()  # first: a closed store, a forked child
        self._while_down()
        try:
            with self._get_pool().connection() as raw:
                yield raw
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            # No connection within timeout_s, or one that broke in use: if the server does not answer a fresh
            # connection either, it is down (later callers fail at once); else this was one broken connection
            # (the pool drops it) or a pool too busy for timeout_s. One probe per PROBE_INTERVAL_S at most.
            if time.monotonic() >= self._next_probe and self._probe_lock.acquire(blocking=False):
                try:
                    self._probe()
                finally:
                    self._probe_lock.release()
            raise StoreUnavailableError(
                self._down or f"cannot use the PostgreSQL store {self.location}: {self._one_line(str(e))}",
                retry_after=RETRY_AFTER_S) from e

    @contextmanager
    def _read(self) -> Iterator[_Conn]:
        with self._connection() as raw:
            yield _Conn(raw)

    @contextmanager
    def _write(self, *, durable: bool = True, lock: str | None = None) -> Iterator[_Conn]:
        committing = False
        try:
            with self._connection() as raw:
                with raw.transaction():
                    if not durable:  # counters: losing the last ones in a database crash harms nobody
                        raw.execute("SET LOCAL synchronous_commit = off")
                    if lock == "api_keys":
                        raw.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
                    elif lock is not None:
                        raise ValueError(f"unknown lock {lock!r}")
                    yield _Conn(raw)
                    committing = True  # the COMMIT is sent as the block exits
        except StoreUnavailableError as e:
            # A connection lost during COMMIT leaves its outcome unknown: the server may have made it durable
            # and died before saying so (BaseStore.record_usage deletes such a ledger row later).
            e.may_have_committed = committing
            raise

    def _clock(self, conn: _Conn) -> float:
        return float(conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])

    def _close_connections(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    # ---- schema ------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self._connect_timeout)
        except psycopg.Error as e:
            raise self._connect_error(e) from e
        try:
            with conn.transaction():
                # replicas starting together: one migrates, the others wait here and then find it done
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS lastrank_schema (version BIGINT NOT NULL)")
                row = conn.execute("SELECT version FROM lastrank_schema").fetchone()
                if row is None:
                    conn.execute("INSERT INTO lastrank_schema (version) VALUES (0)")
                version = 0 if row is None else row[0]
                latest = schema.schema_version()
                if version > latest:
                    raise StoreError(
                        f"the PostgreSQL store {self.location} has schema version {version}, newer than this "
                        f"lastrank understands ({latest}); upgrade lastrank"
                    )
                for number in range(version + 1, latest + 1):
                    for statement in schema.render(schema.MIGRATIONS[number - 1], "postgresql"):
                        conn.execute(statement)
                    conn.execute("UPDATE lastrank_schema SET version = %s", (number,))
        except psycopg.OperationalError as e:
            raise self._connect_error(e) from e
        finally:
            conn.close()

    def schema_version(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT version FROM lastrank_schema").fetchone()[0]
