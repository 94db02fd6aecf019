"""Opening, reopening and migrating the store (a SQLite file, a PostgreSQL database); connection lifecycle.

Tests taking `store` or `target` run on both backends (conftest.py); the others check one backend's own
mechanics (SQLite's user_version and file handling, PostgreSQL's version table and connection errors).
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
import time

import pytest

import lastrank.store.schema as schema
from lastrank.errors import StoreUnavailableError
from lastrank.store import SCHEMA_VERSION, PostgresStore, Store, StoreError, UsageRow, default_db_path, open_store
from support.threads import in_threads


def _row(request_id: str) -> UsageRow:
    return UsageRow(request_id, None, "m", "/v1/rerank", "jina", 1, 10, 1, 200, 1.0, 0.000008)


def _user_version(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def test_fresh_file_in_new_folders(tmp_path):
    path = tmp_path / "a" / "b" / "lastrank.db"
    with Store(path) as store:
        assert store.path == path and path.exists()
        assert store.schema_version() == SCHEMA_VERSION >= 1
    assert _user_version(path) == SCHEMA_VERSION


def test_reopen_keeps_data(target):
    with open_store(target) as store:
        assert store.schema_version() == SCHEMA_VERSION
        record, plaintext = store.create_key("acme")
        store.record_usage(_row("r1"))
    with open_store(target) as again:
        assert again.schema_version() == SCHEMA_VERSION
        assert again.verify_key(plaintext) == record
        assert again.count_usage() == 1
        assert again.record_usage(_row("r1")) is False


def test_one_definition_renders_for_both():
    """The same migrations, with only the column types spelled per database."""
    for number, migration in enumerate(schema.MIGRATIONS, 1):
        lite, pg = schema.render(migration, "sqlite"), schema.render(migration, "postgresql")
        assert len(lite) == len(pg) >= 1
        for a, b in zip(lite, pg):
            for dialect_type, common in [("BIGINT", "INTEGER"), ("DOUBLE PRECISION", "REAL"), ("BYTEA", "BLOB")]:
                b = b.replace(dialect_type, common)
            assert a == b, number
    assert SCHEMA_VERSION == len(schema.MIGRATIONS) == 5


def test_version_1_file_is_upgraded_keeping_its_data(tmp_path):
    """A file made by lastrank 0.1 (schema 1) gains the refusal and rate-limit tables and the keys' model
    list on open; its keys may use every model."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in schema.render(schema.MIGRATIONS[0], "sqlite"):
        conn.execute(statement)
    conn.execute("INSERT INTO usage VALUES ('old', NULL, 'm', '/v1/rerank', 'jina', 3, 30, 1, 200, 1.0, 24000,"
                 " '2026-11-01T10:00:00.000000Z')")
    conn.execute("INSERT INTO api_keys VALUES ('0123456789ab', 'old-key', x'00', '2026-11-01T10:00:00.000000Z',"
                 " NULL, NULL, NULL)")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.schema_version() == 5
        assert store.get_usage("old").documents == 3
        assert store.get_usage("old").provider is None  # rows from before the router name no provider
        assert [(k.name, k.models) for k in store.list_keys()] == [("old-key", None)]
        store.record_refusals({("2026-11-01", "", "/v1/rerank", 401, "m"): 2})
        assert store.usage_summary()[0]["requests"] == 3  # the ledger row and two refusals
    assert _user_version(path) == 5


def test_next_migration_runs_once_and_keeps_data(tmp_path, monkeypatch):
    path = tmp_path / "x.db"
    with Store(path) as store:
        _, plaintext = store.create_key("acme")
        store.record_usage(_row("r1"))
    v2 = "ALTER TABLE usage ADD COLUMN region TEXT; CREATE TABLE v2_marker (n INTEGER); INSERT INTO v2_marker VALUES (1)"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [v2])
    for _ in range(2):  # the second open must not run it again (the INSERT would add a second row)
        with Store(path) as store:
            assert store.schema_version() == SCHEMA_VERSION + 1
            assert store.verify_key(plaintext) is not None and store.count_usage() == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM v2_marker").fetchone()[0] == 1
    assert "region" in [c[1] for c in conn.execute("PRAGMA table_info(usage)")]
    conn.close()


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "x.db"
    Store(path).close()
    broken = "CREATE TABLE half_done (n INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [broken])
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        Store(path)
    assert _user_version(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "half_done" not in tables and {"api_keys", "usage"} <= tables


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "x.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "x.db"
    path.write_bytes(b"this is not sqlite, just text that is long enough to look like a header" * 20)
    with pytest.raises(StoreError, match="cannot open"):
        Store(path)


@pytest.mark.parametrize("bad", [":memory:", "file:x.db?mode=memory"])
def test_memory_is_refused(bad):
    with pytest.raises(StoreError, match="file path"):
        Store(bad)


def test_default_path_is_in_the_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # platformdirs on Linux honours it
    path = default_db_path()
    assert path == tmp_path / "data" / "lastrank" / "lastrank.db"
    with Store() as store:
        assert store.path == path and path.exists()


def test_close_closes_every_thread_connection(tmp_path):
    store = Store(tmp_path / "x.db")
    conns = []

    def use():
        # not threading.get_ident(): a finished thread's ident can be reused, giving a duplicate request id
        store.record_usage(_row(f"t-{uuid.uuid4().hex}"))
        conns.append(store._conn())

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    keep_alive = threading.Event()
    holder = threading.Thread(target=lambda: (use(), keep_alive.wait()))  # a thread still running at close()
    holder.start()
    for t in threads:
        t.join()
    while len(conns) < 4:
        time.sleep(0.01)
    store.close()
    keep_alive.set()
    holder.join()
    for conn in conns:  # including the one of the thread still running at close()
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    with pytest.raises(StoreError, match="closed"):
        store.count_usage()
    with Store(tmp_path / "x.db") as again:
        assert again.count_usage() == 4


def test_forked_child_opens_its_own_connection(target):
    """A store opened before fork (e.g. a pre-fork server) stays usable in the parent and the child."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, sys
        from lastrank.store import UsageRow, open_store
        store = open_store(sys.argv[1])
        store.count_usage()  # the parent's connection exists before the fork
        pid = os.fork()
        if pid == 0:
            store.record_usage(UsageRow("child", None, "m", "/v1/rerank", "jina", 1, 1, 1, 200, 1.0, 0.0))
            store.close()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        store.record_usage(UsageRow("parent", None, "m", "/v1/rerank", "jina", 1, 1, 1, 200, 1.0, 0.0))
        store.close()
        """
    )
    done = subprocess.run([sys.executable, "-c", code, target], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with open_store(target) as store:
        assert sorted(r.request_id for r in store.list_usage()) == ["child", "parent"]


# ---- PostgreSQL's own mechanics ------------------------------------------------------------------


def _pg(url):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_pg_next_migration_runs_once_and_keeps_data(pg_url, monkeypatch):
    url = pg_url
    with open_store(url) as store:
        _, plaintext = store.create_key("acme")
        store.record_usage(_row("r1"))
    v2 = ("ALTER TABLE usage ADD COLUMN region TEXT; CREATE TABLE v2_marker (n {int}); "
          "INSERT INTO v2_marker VALUES (1)")
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [v2])
    for _ in range(2):
        with open_store(url) as store:
            assert store.schema_version() == SCHEMA_VERSION + 1
            assert store.verify_key(plaintext) is not None and store.count_usage() == 1
    with _pg(url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM v2_marker").fetchone()[0] == 1
        assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'v2_marker'"
                            ).fetchone()[0] == "bigint"
        assert conn.execute("SELECT version FROM lastrank_schema").fetchall() == [(SCHEMA_VERSION + 1,)]


def test_pg_failed_migration_changes_nothing(pg_url, monkeypatch):
    import psycopg

    url = pg_url
    open_store(url).close()
    broken = "CREATE TABLE half_done (n INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [broken])
    with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_table"):
        open_store(url)
    with _pg(url) as conn:
        assert conn.execute("SELECT version FROM lastrank_schema").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "half_done" not in tables and {"api_keys", "usage", "refusals", "rate_buckets"} <= tables


def test_pg_newer_schema_is_refused(pg_url):
    url = pg_url
    open_store(url).close()
    with _pg(url) as conn:
        conn.execute("UPDATE lastrank_schema SET version = %s", (SCHEMA_VERSION + 5,))
    with pytest.raises(StoreError, match="newer"):
        open_store(url)


def test_pg_replicas_starting_together_migrate_once(pg_url):
    """Four clients open a fresh database at once: the advisory lock lets one migrate, the rest wait."""
    url = pg_url
    stores = []
    try:
        in_threads(4, lambda i: stores.append(open_store(url)), together=True)
    finally:
        for s in stores:
            s.close()
    assert len(stores) == 4
    with _pg(url) as conn:
        assert conn.execute("SELECT version FROM lastrank_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_pg_unreachable_server_is_one_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreError) as exc:
        PostgresStore(f"postgresql://lastrank:s3cret-pw@127.0.0.1:{port}/x", timeout_s=2)
    assert time.monotonic() - started < 10
    message = str(exc.value)
    assert "cannot use the PostgreSQL store" in message and str(port) in message
    assert "s3cret-pw" not in message  # never a password in a message
    assert "\n" not in message  # libpq's hint joins its line: one line for the CLI's `lastrank: error:`
    assert isinstance(exc.value, StoreUnavailableError)  # the API's 503, should a server meet it


def test_pg_store_is_picked_by_url_and_hides_the_password(pg_url):
    url = pg_url
    with open_store(url) as store:
        assert isinstance(store, PostgresStore) and store.shared_rate_limits
        assert store.location == url  # the test server has no password
    from lastrank.store.postgres import redact

    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgres://u:p%40w@h/db?sslmode=require") == "postgres://u:***@h/db?sslmode=require"
    assert redact("postgresql://h/db?password=pw&sslmode=require") == "postgresql://h/db?password=***&sslmode=require"


def test_closed_store_refuses_work(store):
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count_usage()
