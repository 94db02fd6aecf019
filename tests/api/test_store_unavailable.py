"""A SQLite store that cannot be written answers 503 with Retry-After (never a 500, never billed): a write
lock held past busy_timeout, or the database's folder deleted under the server. (PostgreSQL going away:
test_store_outage.py for a real server stopped and started again, test_shared_store.py for a connection lost
under the ledger write.)"""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from fastapi.testclient import TestClient

from lastrank.api.app import create_app
from lastrank.api.settings import ServerSettings
from lastrank.store import Store

BODY = {"query": "q words", "documents": ["q words here", "nothing"]}


@pytest.fixture
def served(tmp_path, fake_scheduler):
    def make(path, **store_options):
        store = Store(path, **store_options)
        _, key = store.create_key("k")
        client = TestClient(create_app(ServerSettings(model=("/ckpt/tiny",)), store, scheduler=fake_scheduler),
                            raise_server_exceptions=False)
        client.__enter__()
        made.append((client, store))
        return client, store, {"Authorization": f"Bearer {key}"}

    made = []
    yield make
    for client, store in made:
        client.__exit__(None, None, None)
        store.close()


def _is_503(r) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.json()["error"]["type"] == "store_unavailable" and int(r.headers["retry-after"]) >= 1


def test_a_write_lock_held_too_long_is_503_and_unbilled(served, tmp_path):
    client, store, auth = served(tmp_path / "lastrank.db", busy_timeout_s=0.3)
    assert client.post("/v1/rerank", json=BODY, headers=auth).status_code == 200
    other = sqlite3.connect(tmp_path / "lastrank.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock (reads go on: WAL)
    try:
        r = client.post("/v1/rerank", json=BODY, headers=auth)
        _is_503(r)
        assert "cannot write to the database" in r.json()["detail"]
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The 503 was counted as a refusal, which the store's background thread writes: its write waits on the held
    # lock and goes through the moment the lock goes, alongside the next request's. flush_refusals returns once that
    # write is done, so it is not the next request's contender under the 0.3 s busy timeout (a slow fsync of it
    # could make that request a 503 too).
    store.flush_refusals()
    assert client.post("/v1/rerank", json=BODY, headers=auth).status_code == 200
    assert store.count_usage() == 2 and store.get_usage(r.headers["x-request-id"]) is None


def test_a_deleted_database_folder_is_503_and_not_ready(served, tmp_path):
    # SQLite would go on writing into the deleted file through its open connections: 200s billed into nothing
    client, store, auth = served(tmp_path / "data" / "lastrank.db")
    assert client.post("/v1/rerank", json=BODY, headers=auth).status_code == 200
    assert client.get("/ready").status_code == 200
    shutil.rmtree(tmp_path / "data")
    _is_503(client.post("/v1/rerank", json=BODY, headers=auth))
    r = client.get("/ready")
    _is_503(r)
    assert "deleted, moved or replaced" in r.json()["detail"]
    assert client.get("/health").status_code == 200  # liveness only


def test_a_new_thread_after_the_folder_went_is_store_unavailable(tmp_path):
    # Each worker thread opens its own SQLite connection: one opened after the folder went cannot open the file.
    from concurrent.futures import ThreadPoolExecutor

    from lastrank.errors import StoreUnavailableError

    store = Store(tmp_path / "data" / "lastrank.db")
    try:
        shutil.rmtree(tmp_path / "data")
        with ThreadPoolExecutor(1) as pool, pytest.raises(StoreUnavailableError, match="cannot open"):
            pool.submit(store.has_active_keys).result()
    finally:
        store.close()
