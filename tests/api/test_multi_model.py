"""Several models in one server: routing by `model` in every dialect, /v1/models, per-model ledger rows and
metrics, keys limited to some models. Two real backends: the tiny random Jina V3 and the real MiniLM."""

from __future__ import annotations

import pytest

from lastrank.types import RerankOptions, RerankRequest

QUERY = "how long do fleas live"
DOCS = ["Paris is the capital of France.", "Adult fleas live for about two to three months.",
        "Green tea contains catechins.", "A flea's life cycle has four stages: egg, larva, pupa and adult."]


@pytest.fixture(scope="module")
def minilm():
    from lastrank import Reranker

    return Reranker("sentence-transformers/all-MiniLM-L6-v2", dtype="float32")


@pytest.fixture
def server(store, tiny_reranker, minilm):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.models import ServedModel
    from lastrank.api.settings import ServerSettings

    models = [ServedModel(name="jina-tiny", model_id=str(tiny_reranker.path), implicit_names=("jina-reranker-v3",),
                          backend=tiny_reranker.backend),
              ServedModel(name="minilm", model_id="sentence-transformers/all-MiniLM-L6-v2",
                          implicit_names=("all-MiniLM-L6-v2",), backend=minilm.backend)]
    with TestClient(create_app(ServerSettings(), store, models=models), raise_server_exceptions=False) as c:
        yield c


def in_process(reranker, **options):
    request = RerankRequest(query=QUERY, documents=DOCS, options=RerankOptions(**options))
    return [r.index for r in reranker.rerank_request(request).results]


@pytest.mark.parametrize("route, body_key, results_of", [
    ("/v1/rerank", "documents", lambda b: b["results"]),
    ("/v2/rerank", "documents", lambda b: b["results"]),
    ("/rerank", "texts", lambda b: b),
])
def test_every_dialect_routes_by_name_and_matches_in_process(server, tiny_reranker, minilm, route, body_key,
                                                               results_of):
    for name, reranker in (("jina-tiny", tiny_reranker), ("minilm", minilm), ("all-MiniLM-L6-v2", minilm),
                           ("jina-reranker-v3", tiny_reranker)):
        r = server.post(route, json={"model": name, "query": QUERY, body_key: DOCS})
        assert r.status_code == 200, r.text
        assert [x["index"] for x in results_of(r.json())] == in_process(reranker), name
    # the real model ranks the flea passages first
    assert set(in_process(minilm)[:2]) == {1, 3}


def test_model_is_required_with_several_and_unknown_names_list_the_served_ones(server):
    r = server.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 400 and "`model` is required" in r.json()["error"]["message"]
    assert "'jina-tiny'" in r.json()["error"]["message"] and "'minilm'" in r.json()["error"]["message"]
    r = server.post("/v2/rerank", json={"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and "'jina-tiny', 'minilm'" in r.json()["error"]["message"]


def test_models_lists_each_with_what_it_is(server):
    data = {m["id"]: m for m in server.get("/v1/models").json()["data"]}
    assert set(data) == {"jina-tiny", "minilm"}
    assert (data["jina-tiny"]["family"], data["jina-tiny"]["score"], data["jina-tiny"]["random_weights"]) == \
        ("jina-v3", "cosine", True)
    assert (data["minilm"]["family"], data["minilm"]["score"], data["minilm"]["embedding_dim"],
            data["minilm"]["random_weights"]) == ("bi-encoder", "cosine", 384, False)
    assert data["minilm"]["context_length"] > 0 and "all-MiniLM-L6-v2" in data["minilm"]["aliases"]
    assert server.get("/ready").json() == {"status": "ready", "models": {"jina-tiny": "ready", "minilm": "ready"}}


def test_ledger_and_metrics_carry_the_model(server, store):
    r1 = server.post("/v1/rerank", json={"model": "minilm", "query": QUERY, "documents": DOCS})
    r2 = server.post("/v1/rerank", json={"model": "jina-reranker-v3", "query": QUERY, "documents": DOCS[:2]})
    assert r1.json()["model"] == "minilm" and r2.json()["model"] == "jina-tiny"
    assert store.get_usage(r1.headers["x-request-id"]).model == "minilm"
    assert store.get_usage(r2.headers["x-request-id"]).model == "jina-tiny"
    metrics = server.get("/metrics").text
    assert 'lastrank_documents_total{model="minilm"} 4.0' in metrics
    assert 'lastrank_documents_total{model="jina-tiny"} 2.0' in metrics
    assert 'lastrank_ready{model="minilm"} 1.0' in metrics


def test_a_key_limited_to_one_model_gets_403_for_the_other(server, store):
    _, plaintext = store.create_key("minilm-only", models=["minilm"])
    auth = {"Authorization": f"Bearer {plaintext}"}
    assert server.post("/v1/rerank", headers=auth, json={"model": "minilm", "query": QUERY,
                                                         "documents": DOCS}).status_code == 200
    r = server.post("/v1/rerank", headers=auth, json={"model": "jina-tiny", "query": QUERY, "documents": DOCS})
    assert r.status_code == 403 and "may not use model 'jina-tiny'" in r.json()["error"]["message"]


def test_tei_scores_follow_each_models_declared_rule(server):
    # cosine models: raw_scores gives the cosine, otherwise (1 + cosine) / 2
    raw = server.post("/rerank", json={"model": "minilm", "query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    unit = server.post("/rerank", json={"model": "minilm", "query": QUERY, "texts": DOCS}).json()
    v1 = server.post("/v1/rerank", json={"model": "minilm", "query": QUERY, "documents": DOCS}).json()["results"]
    assert [x["score"] for x in raw] == pytest.approx([x["relevance_score"] for x in v1])
    assert [x["score"] for x in unit] == pytest.approx([(1 + x["relevance_score"]) / 2 for x in v1])


def test_two_models_with_one_explicit_name_refuse_to_start(tiny_reranker, minilm):
    from lastrank.api.models import ModelTable, ServedModel

    with pytest.raises(ValueError, match="given to two served models"):
        ModelTable([ServedModel(name="x", backend=tiny_reranker.backend), ServedModel(name="x", backend=minilm.backend)])
    # an implicit name two models claim belongs to neither
    table = ModelTable([ServedModel(name="a", implicit_names=("jina-reranker-v3",)),
                        ServedModel(name="b", implicit_names=("jina-reranker-v3",))])
    with pytest.raises(Exception, match="not served here"):
        table.resolve("jina-reranker-v3")


def test_python_client_picks_the_model_and_leaves_limits_to_it(server, tiny_reranker, minilm):
    """lastrank.Client.rerank(model=...) routes on a server of several models; with no limits given, each model
    keeps its own (MiniLM's 256-token window, not another family's default)."""
    from lastrank import Client
    from lastrank.errors import InvalidRequestError

    http = Client("http://testserver")
    http._http = server  # the in-process app (a TestClient is an httpx.Client)
    long = "fleas " * 400  # ~400 tokens: cut at MiniLM's own limit
    for name, reranker in (("jina-tiny", tiny_reranker), ("minilm", minilm)):
        got = http.rerank(QUERY, DOCS + [long], model=name)
        expected = reranker.rerank_request(RerankRequest(query=QUERY, documents=DOCS + [long])).results
        assert [g["index"] for g in got] == [e.index for e in expected], name
        for g, e in zip(got, expected):
            assert g["relevance_score"] == pytest.approx(e.relevance_score, abs=1e-5)
    with pytest.raises(InvalidRequestError, match="`model` is required"):
        http.rerank(QUERY, DOCS)


def test_python_client_sends_options_as_rerank_options_normalised_them(server):
    """Client.rerank sends the options RerankOptions checked, normalised: a numpy count goes out as an int (JSON
    has no numpy types; before, httpx could not encode it)."""
    import numpy as np

    from lastrank import Client

    http = Client("http://testserver")
    http._http = server
    got = http.rerank(QUERY, DOCS, model="minilm", top_n=np.int64(2), max_doc_length=np.int32(64))
    assert len(got) == 2
