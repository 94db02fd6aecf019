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

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from lastrank.store import schema
from lastrank.store.base import BaseStore, StoreError

DEFAULT_POOL_SIZE = 8  # connections per process; a server's worker threads share them
DEFAULT_TIMEOUT_S = 30.0  # to connect, and to wait for a free pooled connection
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
            "pip install 'lastrank[postgresql]'"
        ) from e
    return psycopg, psycopg_pool


class PostgresStore(BaseStore):
    """API keys, the usage ledger, refusal counts and rate buckets in a PostgreSQL database. Safe to share
    between threads, processes and machines."""

    shared_rate_limits = True
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__()
        self._psycopg, self._psycopg_pool = _import_psycopg()
        self.url = url
        self.location = redact(url)
        self.path = self.location  # what messages written for the SQLite file show
        self.pool_size = int(pool_size)
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._pool = None
        self._pid = os.getpid()
        self._closed = False
        self._migrate()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # ---- connections -------------------------------------------------------------------------------

    def _connect_error(self, e: Exception) -> StoreError:
        return StoreError(f"cannot use the PostgreSQL store {self.location}: {str(e).strip()}")

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
            self._pool = None
            self._pid = os.getpid()
        with self._lock:
            if self._pool is None:
                pool_cls = self._psycopg_pool.ConnectionPool
                self._pool = pool_cls(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs={"autocommit": True, "connect_timeout": max(1, round(self.timeout_s))},
                    configure=self._configure,
                    check=pool_cls.check_connection,  # a server restart must not hand out dead connections
                    timeout=self.timeout_s,
                    open=False,
                    name="lastrank-store",
                )
                self._pool.open()
            return self._pool

    @contextmanager
    def _connection(self) -> Iterator:
        psycopg, psycopg_pool = self._psycopg, self._psycopg_pool
        try:
            with self._get_pool().connection() as raw:
                yield raw
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            raise self._connect_error(e) from e

    @contextmanager
    def _read(self) -> Iterator[_Conn]:
        with self._connection() as raw:
            yield _Conn(raw)

    @contextmanager
    def _write(self, *, durable: bool = True, lock: str | None = None) -> Iterator[_Conn]:
        with self._connection() as raw:
            with raw.transaction():
                if not durable:  # counters: losing the last ones in a database crash harms nobody
                    raw.execute("SET LOCAL synchronous_commit = off")
                if lock == "api_keys":
                    raw.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
                elif lock is not None:
                    raise ValueError(f"unknown lock {lock!r}")
                yield _Conn(raw)

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
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, round(self.timeout_s)))
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
