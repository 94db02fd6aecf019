"""Qwen3-Reranker and mxbai-rerank-v2 behind every HTTP dialect (tiny random checkpoints, the real engine
in-process): Jina /v1/rerank, Cohere v2 /v2/rerank, TEI /rerank; the same order and scores as the backend
itself, sigmoid scores in [0, 1] (TEI's raw_scores gives the logit difference), and /v1/models saying what
the model is."""

from __future__ import annotations

import math

import pytest

from lastrank.checkpoints.causal import make_causal_checkpoint
from lastrank.types import RerankRequest

Q = "which city is the capital of france"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "Cats sleep a lot.", "Lyon is a French city.", ""]


@pytest.fixture(scope="module", params=["qwen3-reranker", "mxbai-rerank-v2"])
def backend(request, tmp_path_factory):
    from lastrank.families import load_backend

    folder = make_causal_checkpoint(tmp_path_factory.mktemp(request.param), request.param, dtype="float32", seed=5)
    return load_backend(str(folder), device="cpu", dtype="float32")


def test_every_dialect(store, backend):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    expected = backend.rerank(RerankRequest(query=Q, documents=DOCS)).results
    want_order = [r.index for r in expected]
    want = {r.index: r.relevance_score for r in expected}
    raw = {r.index: r.raw_score for r in expected}
    with TestClient(create_app(ServerSettings(), store, backend=backend), raise_server_exceptions=False) as c:
        models = c.get("/v1/models").json()
        assert backend.capabilities.family in str(models)
        name = models["data"][0]["id"]
        jina = c.post("/v1/rerank", json={"model": name, "query": Q, "documents": DOCS})
        assert jina.status_code == 200, jina.text
        got = jina.json()["results"]
        assert [g["index"] for g in got] == want_order
        assert all(g["relevance_score"] == pytest.approx(want[g["index"]], abs=1e-6) for g in got)
        assert all(0.0 <= g["relevance_score"] <= 1.0 for g in got)
        cohere = c.post("/v2/rerank", json={"model": name, "query": Q, "documents": DOCS, "top_n": 2})
        assert cohere.status_code == 200, cohere.text
        assert [g["index"] for g in cohere.json()["results"]] == want_order[:2]
        tei = c.post("/rerank", json={"query": Q, "texts": DOCS, "raw_scores": True})
        assert tei.status_code == 200, tei.text
        for g in tei.json():
            assert g["score"] == pytest.approx(raw[g["index"]], abs=1e-6)
            assert want[g["index"]] == pytest.approx(1 / (1 + math.exp(-g["score"])), abs=1e-6)
        bad = c.post("/v1/rerank", json={"model": name, "query": Q, "documents": DOCS, "max_doc_length": 1})
        assert 400 <= bad.status_code < 500
