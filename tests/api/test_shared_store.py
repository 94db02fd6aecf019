"""Two servers (two apps, as two replicas would be) sharing one PostgreSQL store: one ledger, one set of
rate limits, one set of refusal counts (fake scheduler; a real PostgreSQL server, tests/postgres_server.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import postgres_server
from lastrank.api.app import create_app
from lastrank.api.settings import ServerSettings
from lastrank.store import open_store

BODY = {"query": "q words", "documents": ["q words here", "nothing", "more words"]}


@pytest.fixture
def pg_store():
    with postgres_server.database() as url:
        store = open_store(url)
        yield store
        store.close()


@pytest.fixture
def two_servers(pg_store, fake_scheduler):
    clients = [TestClient(create_app(ServerSettings(model=("/ckpt/tiny",)), pg_store, scheduler=fake_scheduler),
                          raise_server_exceptions=False) for _ in range(2)]
    for c in clients:
        c.__enter__()
    yield clients
    for c in clients:
        c.__exit__(None, None, None)


def test_rate_limits_and_ledger_are_shared(two_servers, pg_store):
    a, b = two_servers
    assert a.app.state.lastrank.limiter.store is pg_store  # a shared store: the buckets live in it
    key, plaintext = pg_store.create_key("alice", requests_per_minute=2)
    auth = {"Authorization": f"Bearer {plaintext}"}
    statuses = [c.post("/v1/rerank", json=BODY, headers=auth).status_code for c in (a, b, a, b)]
    assert statuses == [200, 200, 429, 429]  # 2 a minute in all, not 2 per server
    r = b.post("/v2/rerank", json=BODY, headers=auth)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "2 requests per minute" in r.json()["error"]["message"]

    assert pg_store.count_usage() == 2  # one ledger row per 200, whichever server answered
    pg_store.flush_refusals()
    assert [(x["key_id"], x["route"], x["status"], x["count"]) for x in pg_store.list_refusals()] == [
        (key.id, "/v1/rerank", 429, 2), (key.id, "/v2/rerank", 429, 1)]
    [row] = pg_store.usage_summary()
    assert (row["key_name"], row["requests"], row["errors"], row["documents"]) == ("alice", 5, 3, 6)


def test_documents_per_minute_shared(two_servers, pg_store):
    a, b = two_servers
    _, plaintext = pg_store.create_key("bob", documents_per_minute=5)
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert a.post("/v1/rerank", json=BODY, headers=auth).status_code == 200  # 3 of 5
    r = b.post("/v1/rerank", json=BODY, headers=auth)  # 3 more: short by 1
    assert r.status_code == 429 and "5 documents per minute" in r.json()["error"]["message"]
    one = {"query": "q", "documents": ["d"]}
    assert b.post("/v1/rerank", json=one, headers=auth).status_code == 200  # 4 of 5
    too_many = {"query": "q", "documents": ["d"] * 6}
    assert a.post("/v1/rerank", json=too_many, headers=auth).status_code == 413  # could never pass
