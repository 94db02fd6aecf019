"""The app over the real Scheduler and the real engine (tiny checkpoint), in-process: admission 503,
deadline 504, the observer feeding metrics, and results equal to Reranker.rerank."""

from __future__ import annotations

import re
import threading
import time

import pytest

Q = "which city is the capital of france"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "Cats sleep a lot.", "Lyon is a French city."]


class GatedEngine:
    """The real engine with a gate in run_blocks: the model waits until the test opens it, so requests stay
    queued (or pass their deadline) for as long as the test needs, whatever the machine's speed."""

    def __init__(self, engine):
        self.engine = engine
        self.gate = threading.Event()

    def plan(self, request):
        return self.engine.plan(request)

    def run_blocks(self, blocks):
        assert self.gate.wait(60), "the test left the gate closed"
        return self.engine.run_blocks(blocks)

    def __getattr__(self, name):  # capabilities, describe(), ...: the real backend's
        return getattr(self.engine, name)

    def finish(self, plan, outputs):
        return self.engine.finish(plan, outputs)


def make(store, engine, **overrides):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    app = create_app(ServerSettings(**overrides), store, backend=engine)
    return TestClient(app, raise_server_exceptions=False)


def test_same_as_reranker_and_metrics(store, tiny_reranker):
    expected = tiny_reranker.rerank(Q, DOCS)
    with make(store, tiny_reranker.backend) as c:
        r = c.post("/v1/rerank", json={"query": Q, "documents": DOCS})
        assert r.status_code == 200
        got = r.json()["results"]
        assert [g["index"] for g in got] == [e["index"] for e in expected]
        assert [g["relevance_score"] for g in got] == pytest.approx([float(e["relevance_score"]) for e in expected],
                                                                     abs=1e-6)
        metrics = c.get("/metrics").text
    tokens = [line for line in metrics.splitlines() if line.startswith("lastrank_engine_tokens_total")]
    assert tokens and float(tokens[0].split()[-1]) > 0
    assert 'lastrank_queue_requests{model="jina-reranker-v3"} 0.0' in metrics


def test_queue_full_is_503_and_ledger_counts_only_200s(store, tiny_reranker):
    engine = GatedEngine(tiny_reranker.backend)
    with make(store, engine, max_queued_requests=1) as c:
        results = []

        def send():
            results.append(c.post("/v1/rerank", json={"query": Q, "documents": DOCS}))

        threads = [threading.Thread(target=send) for _ in range(4)]
        try:
            for t in threads:
                t.start()
            # One request holds the only queue slot (planning, then waiting at the closed gate): the other
            # three are refused, and answered, before the gate opens.
            end = time.monotonic() + 60
            while len(results) < 3 and time.monotonic() < end:
                time.sleep(0.01)
        finally:
            engine.gate.set()
            for t in threads:
                t.join(60)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 503, 503, 503], statuses
    for r in results:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "overloaded_error"
    ok = {r.json()["id"] for r in results if r.status_code == 200}
    assert {row.request_id for row in store.list_usage()} == ok


def test_deadline_is_504(store, tiny_reranker):
    engine = GatedEngine(tiny_reranker.backend)
    with make(store, engine, request_timeout_s=0.2) as c:
        try:
            r = c.post("/v1/rerank", json={"query": Q, "documents": DOCS})  # the model never answers in time
        finally:
            engine.gate.set()  # the worker finishes the abandoned batch, so the app can stop
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout_error" and "retry-after" in r.headers
    assert store.list_usage() == []


def test_truncation_is_reported_from_the_real_engine(store, tiny_reranker):
    long_docs = DOCS + ["Paris " * 40]
    with make(store, tiny_reranker.backend) as c:
        r = c.post("/v2/rerank", json={"query": Q, "documents": long_docs, "max_tokens_per_doc": 6,
                                       "max_query_length": 3})
        tei = c.post("/rerank", json={"query": Q, "texts": long_docs, "truncate": True})
    assert r.status_code == 200, r.text
    truncated = int(r.headers["x-lastrank-truncated-documents"])
    assert truncated >= 1 and r.headers["x-lastrank-query-truncated"] == "true"
    warnings = r.json()["meta"]["warnings"]
    assert warnings[0].startswith(f"{truncated} of {len(long_docs)} documents")
    assert "first 6 tokens" in warnings[0]
    named = re.search(r"\(indices ([\d, ]+)\)", warnings[0]).group(1).split(", ")
    assert len(named) == truncated and "4" in named  # the long document is among them
    assert warnings[1] == "the query was truncated to its first 3 tokens before ranking"
    assert tei.status_code == 200 and tei.headers["x-lastrank-truncated-documents"] == "0"


def test_duplicate_documents_are_deterministic_in_every_dialect(store, tiny_reranker):
    """Two calls with the same duplicated documents give identical scores and order, and every dialect the
    same order. The scores of the two copies are NOT asserted equal: the model is listwise (causal attention
    over one prompt holding every document of a block), so the later copy is read in a different context and
    in general scores differently; exact ties are the engine's to order."""
    docs = ["Paris is the capital of France.", "Cats sleep a lot.", "Paris is the capital of France.",
            "Lyon is a French city."]
    with make(store, tiny_reranker.backend) as c:
        runs = {}
        for route, body in (("/v1/rerank", {"query": Q, "documents": docs}),
                            ("/v2/rerank", {"query": Q, "documents": docs}),
                            ("/rerank", {"query": Q, "texts": docs, "raw_scores": True})):
            got = []
            for _ in range(2):
                r = c.post(route, json=body)
                assert r.status_code == 200, r.text
                items = r.json() if isinstance(r.json(), list) else r.json()["results"]
                got.append([(x["index"], x.get("relevance_score", x.get("score"))) for x in items])
            assert got[0] == got[1], route
            runs[route] = got[0]
    assert runs["/v1/rerank"] == runs["/v2/rerank"] == runs["/rerank"]
    assert sorted(i for i, _ in runs["/v1/rerank"]) == [0, 1, 2, 3]
