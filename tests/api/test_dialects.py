"""Dialect round trips against the fake scheduler: request translation and response shapes."""

from __future__ import annotations

import pytest
from support.fake_scheduler import toy_score

Q = "capital of germany"
DOCS = ["paris is the capital of france", "berlin is the capital of germany", "germany exports cars"]


def expected_order(query=Q, docs=DOCS):
    scores = [toy_score(query, d) for d in docs]
    return sorted(range(len(docs)), key=lambda i: -scores[i])


def test_jina_default_returns_documents(client):
    r = client.post("/v1/rerank", json={"model": "jina-reranker-v3", "query": Q, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == expected_order()
    assert body["results"][0]["document"] == {"text": DOCS[1]}
    assert body["model"] == "jina-reranker-v3"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert body["meta"]["billed_units"]["search_units"] == 1
    assert body["id"] == r.headers["x-request-id"]


def test_jina_top_n_and_no_documents(client):
    r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS, "top_n": 1, "return_documents": False})
    body = r.json()
    assert len(body["results"]) == 1 and "document" not in body["results"][0]
    assert body["results"][0]["index"] == 1


def test_huge_top_n_is_all(client, fake_scheduler):
    r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS, "top_n": 10**9})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert fake_scheduler.requests[-1].options.top_n == 10**9  # passed through; the ranking rule keeps what exists


def test_object_documents_echoed_and_rank_fields(client, fake_scheduler):
    docs = [{"text": "x", "title": "paris france", "id": "a"}, {"title": "berlin germany capital", "id": "b", "n": 3}]
    r = client.post("/v1/rerank", json={"query": Q, "documents": docs, "rank_fields": ["title"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["document"] == docs[1]  # echoed as given, every field
    assert fake_scheduler.requests[-1].documents == ["paris france", "berlin germany capital"]
    r = client.post("/v1/rerank", json={"query": Q, "documents": docs, "rank_fields": ["title", "n"]})
    assert fake_scheduler.requests[-1].documents == ["title: paris france", "title: berlin germany capital\nn: 3"]
    # no rank_fields: objects are ranked on "text"; one without it is a 400
    r = client.post("/v1/rerank", json={"query": Q, "documents": docs})
    assert r.status_code == 400 and "text" in r.json()["detail"]


def test_extensions_reach_the_engine(client, fake_scheduler):
    r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS, "instruction": "prefer cities",
                                        "max_doc_length": 64, "max_query_length": 32, "return_embeddings": True})
    assert r.status_code == 200
    req = fake_scheduler.requests[-1]
    o = req.options
    assert (o.instruction, o.max_doc_length, o.max_query_length, o.return_embeddings) == ("prefer cities", 64, 32, True)
    assert r.json()["results"][0]["embedding"] == [0.5, 0.5]
    assert req.deadline is not None and req.request_id == r.json()["id"]


def test_defaults_are_the_reference_ones(client, fake_scheduler):
    client.post("/v2/rerank", json={"model": "jina-reranker-v3", "query": Q, "documents": DOCS,
                                    "top_n": None, "max_tokens_per_doc": None, "priority": None})
    o = fake_scheduler.requests[-1].options
    # None: the served family's official defaults (Capabilities: 2048 / 512 for Jina V3), not Cohere's 4096
    assert (o.max_doc_length, o.max_query_length, o.top_n, o.instruction) == (None, None, None, None)


def test_cohere_v2_shape(client, fake_scheduler):
    r = client.post("/v2/rerank", json={"model": "jina-reranker-v3", "query": Q, "documents": DOCS, "top_n": 2,
                                        "max_tokens_per_doc": 100, "priority": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"id", "results", "meta"}
    assert body["meta"]["api_version"]["version"] == "2"
    assert body["meta"]["billed_units"]["search_units"] == 1
    assert [set(x) for x in body["results"]] == [{"index", "relevance_score"}] * 2
    assert fake_scheduler.requests[-1].options.max_doc_length == 100
    # gateways may still send return_documents
    r = client.post("/v2/rerank", json={"query": Q, "documents": DOCS, "return_documents": True})
    assert r.json()["results"][0]["document"] == {"text": DOCS[1]}


def test_search_units(client):
    docs = [f"doc {i}" for i in range(250)]
    r = client.post("/v2/rerank", json={"query": "doc", "documents": docs})
    assert r.json()["meta"]["billed_units"]["search_units"] == 3


def test_tei_shape(client):
    r = client.post("/rerank", json={"query": Q, "texts": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list) and [x["index"] for x in body] == expected_order()
    assert set(body[0]) == {"index", "score"}
    assert body[0]["score"] == pytest.approx((1 + 1.0) / 2)
    assert int(r.headers["x-compute-tokens"]) > 0
    r = client.post("/rerank", json={"query": Q, "texts": DOCS, "raw_scores": True, "return_text": True,
                                     "truncate": True, "truncation_direction": "Right"})
    body = r.json()
    assert body[0] == {"index": 1, "text": DOCS[1], "score": 1.0}


def test_tei_truncate_false_refuses_long_texts(client):
    r = client.post("/rerank", json={"query": Q, "texts": ["a " * 3000], "truncate": False})
    assert r.status_code == 400 and "truncate" in r.json()["detail"]
    r = client.post("/rerank", json={"query": Q, "texts": ["short"], "truncation_direction": "left"})
    assert r.status_code == 400


def test_rerank_without_texts_is_jina(client):
    r = client.post("/rerank", json={"query": Q, "documents": DOCS})
    assert r.status_code == 200 and r.json()["results"][0]["document"] == {"text": DOCS[1]}


def test_empty_documents_is_200_empty(client, store):
    for route, body in [("/v1/rerank", {"query": Q, "documents": []}), ("/v2/rerank", {"query": Q, "documents": []}),
                        ("/rerank", {"query": Q, "texts": []})]:
        r = client.post(route, json=body)
        assert r.status_code == 200, (route, r.text)
        results = r.json() if route == "/rerank" else r.json()["results"]
        assert results == []


def test_models_health_ready_metrics_docs(client):
    m = client.get("/v1/models").json()
    assert m["data"][0]["id"] == "jina-reranker-v3" and "/ckpt/tiny" in m["data"][0]["aliases"]
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    client.post("/v1/rerank", json={"query": Q, "documents": DOCS})
    text = client.get("/metrics").text
    for name in ["lastrank_requests_total", "lastrank_request_duration_seconds_bucket", "lastrank_queue_requests",
                 "lastrank_documents_per_request_bucket", "lastrank_tokens_per_document_bucket",
                 "lastrank_truncated_documents_total", "lastrank_blocks_per_request_bucket",
                 "lastrank_engine_tokens_per_second"]:
        assert name in text, name
    assert 'lastrank_requests_total{route="/v1/rerank",status="200"} 1.0' in text
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_served_model_names(make_client):
    c = make_client(served_model_name=("my-reranker",), model_alias=("jina-reranker-v1-base-en",))
    for name in ["my-reranker", "jina-reranker-v3", "jinaai/jina-reranker-v3", "/ckpt/tiny",
                 "jina-reranker-v1-base-en", None]:
        r = c.post("/v1/rerank", json={"model": name, "query": Q, "documents": DOCS})
        assert r.status_code == 200, name
        assert r.json()["model"] == "my-reranker"
    r = c.post("/v1/rerank", json={"model": "rerank-v3.5", "query": Q, "documents": DOCS})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_ledger_one_row_per_200(client, store):
    ids = []
    for i in range(5):
        r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS[: i % 3 + 1]})
        assert r.status_code == 200
        ids.append(r.json()["id"])
    client.post("/v1/rerank", json={"query": "", "documents": DOCS})  # 400: no row
    client.post("/v1/rerank", json={"query": Q, "documents": "x"})  # 422: no row
    rows = store.list_usage()
    assert sorted(r.request_id for r in rows) == sorted(ids)
    row = store.get_usage(ids[2])
    assert (row.documents, row.status, row.route, row.dialect, row.key_id) == (3, 200, "/v1/rerank", "jina", None)
    assert row.cost_usd == pytest.approx(3 * 0.008 / 1000)
    assert row.prompt_tokens > 0 and row.blocks == 1 and row.latency_ms >= 0


# -- One set of input forms on every route (dialects/base.split_inputs), here with a text-only model ----------

ROUTES = [("/v1/rerank", "documents"), ("/v2/rerank", "documents"), ("/rerank", "texts")]


@pytest.mark.parametrize("route,field", ROUTES)
def test_vllm_text_content_ranks_as_the_string(client, fake_scheduler, route, field):
    docs = [{"content": [{"type": "text", "text": d}]} for d in DOCS]
    r = client.post(route, json={"query": {"content": [{"type": "text", "text": Q}]}, field: docs})
    assert r.status_code == 200, r.text
    req = fake_scheduler.requests[-1]
    assert (req.query, req.documents, req.images) == (Q, DOCS, None)
    results = r.json() if route == "/rerank" else r.json()["results"]
    assert [x["index"] for x in results] == expected_order()


@pytest.mark.parametrize("route,field", ROUTES)
def test_text_model_refuses_images_on_every_route(client, fake_scheduler, route, field):
    n = len(fake_scheduler.requests)
    for doc in ({"image": "aGk="}, {"content": [{"type": "image_url", "image_url": {"url": "aGk="}}]}):
        r = client.post(route, json={"query": Q, field: ["a", doc]})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["loc"] == [field, "1"]
        assert "image documents are not supported (this model ranks text only)" in r.json()["detail"]
        r = client.post(route, json={"query": doc, field: ["a"]})
        assert r.status_code == 422 and "image queries are not supported" in r.json()["detail"], r.text
    assert len(fake_scheduler.requests) == n  # nothing reached the model


def test_objects_that_were_text_stay_text(client, fake_scheduler):
    # a field named `content` is metadata when the object has `text` or rank_fields are given
    docs = [{"text": DOCS[0], "content": ["tag"]}, {"body": DOCS[1], "content": [{"type": "text", "text": "no"}]}]
    r = client.post("/v2/rerank", json={"query": Q, "documents": docs[:1]})
    assert r.status_code == 200 and fake_scheduler.requests[-1].documents == [DOCS[0]], r.text
    r = client.post("/v1/rerank", json={"query": Q, "documents": docs, "rank_fields": ["body", "text"]})
    assert r.status_code == 200 and fake_scheduler.requests[-1].documents == ["text: " + DOCS[0], "body: " + DOCS[1]]


def test_document_errors_name_the_right_input(client):
    # an image document before the bad one does not shift the index; TEI names its `texts`
    r = client.post("/v1/rerank", json={"query": Q, "documents": [{"image": "aGk="}, {"a": 1}], "rank_fields": ["b"]})
    assert r.status_code == 400 and "documents[1] has none of the rank_fields" in r.json()["detail"], r.text
    r = client.post("/rerank", json={"query": Q, "texts": ["a", {"title": "x"}]})
    assert r.status_code == 400 and r.json()["detail"].startswith("texts[1] is an object without"), r.text


def test_openapi_shows_the_input_forms_on_every_route(client):
    schema = client.get("/openapi.json").json()
    for route in ("/v1/rerank", "/v2/rerank"):
        body = schema["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        forms = body["properties"]["query"]["anyOf"]
        assert {"type": "string"} in forms and any("content" in f.get("properties", {}) for f in forms)
