"""Refused requests: counted per day, key, route, status and model, never billed, shown in usage_summary.
Each test runs on SQLite and PostgreSQL (conftest.py)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from lastrank.store import UsageRow, cost_for, open_store
from support.threads import in_threads

TODAY = lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d")  # noqa: E731


def test_record_flush_and_list(store):
    key, _ = store.create_key("acme")
    store.record_refusal(key.id, "/v1/rerank", 429, "jina-reranker-v3")
    store.record_refusal(key.id, "/v1/rerank", 429, "jina-reranker-v3")
    store.record_refusal(None, "/v2/rerank", 401, "jina-reranker-v3")
    store.record_refusal(key.id, "/rerank", 503, "jina-reranker-v3")
    store.flush_refusals()
    day = TODAY()
    assert store.list_refusals() == [
        {"day": day, "key_id": None, "route": "/v2/rerank", "status": 401, "model": "jina-reranker-v3", "count": 1},
        {"day": day, "key_id": key.id, "route": "/rerank", "status": 503, "model": "jina-reranker-v3", "count": 1},
        {"day": day, "key_id": key.id, "route": "/v1/rerank", "status": 429, "model": "jina-reranker-v3", "count": 2},
    ]
    assert [r["status"] for r in store.list_refusals(key="acme")] == [503, 429]
    assert store.count_usage() == 0  # refusals are never ledger rows: nothing is billed


def test_the_background_thread_writes_without_a_flush(store):
    store.record_refusal(None, "/v1/rerank", 401, "m")
    deadline = time.monotonic() + 10
    while not store.list_refusals() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["count"] for r in store.list_refusals()] == [1]


def test_close_writes_what_is_pending(target):
    store = open_store(target)
    for _ in range(5):
        store.record_refusal(None, "/v1/rerank", 413, "m")
    store.close()
    with open_store(target) as again:
        assert sum(r["count"] for r in again.list_refusals()) == 5


def test_summary_counts_refusals_as_unbilled_requests(store):
    a, _ = store.create_key("alpha")
    b, _ = store.create_key("beta")
    day = TODAY()
    store.record_usage(UsageRow("ok-1", a.id, "m", "/v1/rerank", "jina", 10, 100, 1, 200, 5.0, cost_for(10)))
    for status in (429, 429, 403):
        store.record_refusal(a.id, "/v1/rerank", status, "m")
    store.record_refusal(b.id, "/v2/rerank", 422, "m")  # beta: refusals only, no ledger row that day
    store.record_refusal(None, "/v1/rerank", 401, "m")
    store.flush_refusals()
    rows = {r["key_name"] or "(no key)": r for r in store.usage_summary()}
    assert rows["alpha"] == {"day": day, "key_id": a.id, "key_name": "alpha", "requests": 4, "errors": 3,
                             "documents": 10, "prompt_tokens": 100, "blocks": 1, "cost_usd": cost_for(10)}
    assert (rows["beta"]["requests"], rows["beta"]["errors"], rows["beta"]["cost_usd"]) == (1, 1, 0.0)
    assert rows["(no key)"]["key_id"] is None and rows["(no key)"]["errors"] == 1
    # ordered like the ledger summary: the keyless row first, then by key id
    assert [r["key_id"] for r in store.usage_summary()] == [None] + sorted([a.id, b.id])
    assert [r["errors"] for r in store.usage_summary(key="beta")] == [1]
    assert store.usage_summary(since="2999-01-01") == []
    assert len(store.usage_summary(since=day)) == 3


def test_two_clients_add_up(target):
    """Replicas count into the same rows: the counts add, none is lost to a race."""
    stores = [open_store(target) for _ in range(2)]

    def worker(i: int):
        for _ in range(5):
            stores[i % 2].record_refusals({(TODAY(), "", "/v1/rerank", 429, "m"): 2})

    try:
        in_threads(4, worker, together=True)
        assert [r["count"] for r in stores[0].list_refusals()] == [4 * 5 * 2]
    finally:
        for s in stores:
            s.close()


def test_record_refusal_never_raises(store):
    store.close()
    store.record_refusal(None, "/v1/rerank", 401, "m")  # closed store: logged, not raised
