"""The app over the real Scheduler and the real engine (tiny checkpoint), in-process: admission 503,
deadline 504, the observer feeding metrics, and results equal to Reranker.rerank."""

from __future__ import annotations

import threading
import time

import pytest

Q = "which city is the capital of france"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "Cats sleep a lot.", "Lyon is a French city."]


class SlowEngine:
    """The real engine with a pause in run_blocks, so requests pile up in the queue."""

    def __init__(self, engine, pause_s: float):
        self.engine, self.pause_s = engine, pause_s

    def plan(self, request):
        return self.engine.plan(request)

    def run_blocks(self, blocks):
        time.sleep(self.pause_s)
        return self.engine.run_blocks(blocks)

    def finish(self, plan, outputs):
        return self.engine.finish(plan, outputs)


def make(store, engine, **overrides):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    app = create_app(ServerSettings(**overrides), store, engine=engine)
    return TestClient(app, raise_server_exceptions=False)


def test_same_as_reranker_and_metrics(store, tiny_reranker):
    expected = tiny_reranker.rerank(Q, DOCS)
    with make(store, tiny_reranker.engine) as c:
        r = c.post("/v1/rerank", json={"query": Q, "documents": DOCS})
        assert r.status_code == 200
        got = r.json()["results"]
        assert [g["index"] for g in got] == [e["index"] for e in expected]
        assert [g["relevance_score"] for g in got] == pytest.approx([float(e["relevance_score"]) for e in expected],
                                                                     abs=1e-6)
        metrics = c.get("/metrics").text
    tokens = [line for line in metrics.splitlines() if line.startswith("lastrank_engine_tokens_total")]
    assert tokens and float(tokens[0].split()[-1]) > 0
    assert "lastrank_queue_requests 0.0" in metrics


def test_queue_full_is_503_and_ledger_counts_only_200s(store, tiny_reranker):
    with make(store, SlowEngine(tiny_reranker.engine, 0.4), max_queued_requests=1) as c:
        results = []

        def send():
            results.append(c.post("/v1/rerank", json={"query": Q, "documents": DOCS}))

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    statuses = sorted(r.status_code for r in results)
    assert 503 in statuses and 200 in statuses, statuses
    for r in results:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "overloaded_error"
    ok = {r.json()["id"] for r in results if r.status_code == 200}
    assert {row.request_id for row in store.list_usage()} == ok


def test_deadline_is_504(store, tiny_reranker):
    with make(store, SlowEngine(tiny_reranker.engine, 1.0), request_timeout_s=0.2) as c:
        r = c.post("/v1/rerank", json={"query": Q, "documents": DOCS})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout_error" and "retry-after" in r.headers
    assert store.list_usage() == []
