"""Opening, reopening and migrating the store file; connection lifecycle."""

from __future__ import annotations

import sqlite3
import threading
import uuid
import time

import pytest

import lastrank.store.db as db
from lastrank.store import SCHEMA_VERSION, Store, StoreError, UsageRow, default_db_path


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


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "x.db"
    with Store(path) as store:
        record, plaintext = store.create_key("acme")
        store.record_usage(_row("r1"))
    with Store(str(path)) as again:  # str paths work too
        assert again.schema_version() == SCHEMA_VERSION
        assert again.verify_key(plaintext) == record
        assert again.count_usage() == 1
        assert again.record_usage(_row("r1")) is False
    assert _user_version(path) == SCHEMA_VERSION


def test_next_migration_runs_once_and_keeps_data(tmp_path, monkeypatch):
    path = tmp_path / "x.db"
    with Store(path) as store:
        _, plaintext = store.create_key("acme")
        store.record_usage(_row("r1"))
    v2 = "ALTER TABLE usage ADD COLUMN region TEXT; CREATE TABLE v2_marker (n INTEGER); INSERT INTO v2_marker VALUES (1)"
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS + [v2])
    monkeypatch.setattr(db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
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
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS + [broken])
    monkeypatch.setattr(db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
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


def test_forked_child_opens_its_own_connection(tmp_path):
    """A store opened before fork (e.g. a pre-fork server) stays usable in the parent and the child."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, sys
        from lastrank.store import Store, UsageRow
        store = Store(sys.argv[1])
        store.count_usage()  # the parent's connection exists before the fork
        pid = os.fork()
        if pid == 0:
            store.record_usage(UsageRow("child", None, "m", "/v1/rerank", "jina", 1, 1, 1, 200, 1.0, 0.0))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        store.record_usage(UsageRow("parent", None, "m", "/v1/rerank", "jina", 1, 1, 1, 200, 1.0, 0.0))
        """
    )
    path = tmp_path / "fork.db"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with Store(path) as store:
        assert sorted(r.request_id for r in store.list_usage()) == ["child", "parent"]
