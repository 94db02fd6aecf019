"""The bad-input table: every row gets a clear 4xx with the common error body; none is a 500."""

from __future__ import annotations

import json

import pytest

Q = "what is a reranker"
D = ["a reranker orders documents", "bananas are yellow"]


def j(obj) -> bytes:
    return json.dumps(obj).encode()


# (name, route, raw body bytes, expected status)
TABLE = [
    ("malformed JSON", "/v1/rerank", b'{"query": "x", "documents": [', 400),
    ("not JSON at all", "/v2/rerank", b"hello", 400),
    ("empty body", "/v1/rerank", b"", 400),
    ("JSON array body", "/v1/rerank", j([Q, D]), 400),
    ("JSON string body", "/rerank", j("query"), 400),
    ("invalid UTF-8", "/v1/rerank", b'{"query": "\xff\xfe", "documents": ["a"]}', 400),
    ("lone surrogate escape", "/v1/rerank", b'{"query": "\\ud800", "documents": ["a"]}', 400),
    ("query is a number", "/v1/rerank", j({"query": 123, "documents": D}), 422),
    ("query object without text", "/v1/rerank", j({"query": {"title": Q}, "documents": D}), 422),
    ("image query", "/rerank", j({"query": {"image": "https://x/y.png"}, "documents": D}), 422),
    ("query object without text on v2", "/v2/rerank", j({"query": {"title": Q}, "documents": D}), 422),
    ("score_threshold is a string", "/v1/rerank", j({"query": Q, "documents": D, "score_threshold": "0.5"}), 422),
    ("score_threshold is NaN (not JSON: refused by the parser)", "/v2/rerank",
     b'{"query": "q", "documents": ["a"], "score_threshold": NaN}', 400),
    ("documents is a string", "/v1/rerank", j({"query": Q, "documents": "abc"}), 422),
    ("document is a number", "/v2/rerank", j({"query": Q, "documents": ["a", 5]}), 422),
    ("document is a list", "/v1/rerank", j({"query": Q, "documents": [["a"]]}), 422),
    ("top_n is a string", "/v1/rerank", j({"query": Q, "documents": D, "top_n": "2"}), 422),
    ("top_n is a float", "/v1/rerank", j({"query": Q, "documents": D, "top_n": 1.5}), 422),
    ("return_documents is a string", "/v1/rerank", j({"query": Q, "documents": D, "return_documents": "yes"}), 422),
    ("tei texts has a number", "/rerank", j({"query": Q, "texts": ["a", 1]}), 422),
    ("tei bad direction", "/rerank", j({"query": Q, "texts": ["a"], "truncation_direction": "up"}), 422),
    ("missing query", "/v1/rerank", j({"documents": D}), 422),
    ("missing documents", "/v2/rerank", j({"query": Q}), 422),
    ("empty query", "/v1/rerank", j({"query": "", "documents": D}), 400),
    ("blank query", "/rerank", j({"query": "   \n", "texts": D}), 400),
    ("negative top_n", "/v1/rerank", j({"query": Q, "documents": D, "top_n": -1}), 422),
    ("zero max_doc_length", "/v1/rerank", j({"query": Q, "documents": D, "max_doc_length": 0}), 422),
    ("negative max_tokens_per_doc", "/v2/rerank", j({"query": Q, "documents": D, "max_tokens_per_doc": -5}), 422),
    ("unknown model", "/v1/rerank", j({"model": "rerank-english-v3.0", "query": Q, "documents": D}), 404),
    ("unknown model v2", "/v2/rerank", j({"model": "nope", "query": Q, "documents": D}), 404),
    ("null query", "/v1/rerank", j({"query": None, "documents": D}), 422),
    ("null documents", "/v2/rerank", j({"query": Q, "documents": None}), 422),
    ("null document", "/v1/rerank", j({"query": Q, "documents": ["a", None]}), 422),
    ("object without text", "/v1/rerank", j({"query": Q, "documents": [{"title": "a"}]}), 400),
    ("object with non-string text", "/v1/rerank", j({"query": Q, "documents": [{"text": 5}]}), 400),
    ("rank_fields none present", "/v1/rerank", j({"query": Q, "documents": [{"a": "x"}], "rank_fields": ["b"]}), 400),
    ("100,000 documents", "/v1/rerank", j({"query": Q, "documents": ["d"] * 100_000}), 413),
    ("10 MB document", "/v1/rerank", j({"query": Q, "documents": ["x" * 10_000_000]}), 413),
    ("instruction too long", "/v1/rerank", j({"query": Q, "documents": D, "instruction": "i" * 100_000}), 413),
    ("query too long", "/v1/rerank", j({"query": "q" * 100_000, "documents": D}), 413),
    ("body over the byte limit", "/v2/rerank", j({"query": Q, "documents": ["y" * 1_000_000] * 40}), 413),
    ("unknown route", "/v3/rerank", j({"query": Q, "documents": D}), 404),
]


@pytest.mark.parametrize("name,route,raw,status", TABLE, ids=[t[0] for t in TABLE])
def test_bad_input(client, name, route, raw, status):
    r = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["error"]["code"] == status
    assert body["error"]["message"] == body["detail"]
    assert isinstance(body["error"]["type"], str)
    assert r.headers.get("x-request-id")


def test_method_not_allowed_has_the_shape(client):
    r = client.get("/v1/rerank")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_body_limit_counts_the_stream_not_content_length(make_client):
    c = make_client(max_body_bytes=1000)

    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(50):
            yield b"x" * 100
        yield b'"]}'

    # a streamed body has no Content-Length: the middleware must count bytes
    r = c.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
    # with a Content-Length over the limit the answer comes before the body is read
    big = j({"query": "q", "documents": ["x" * 5000]})
    r = c.post("/v1/rerank", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


NULLABLE = {
    "/v1/rerank": ["model", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc", "instruction",
                   "return_embeddings", "max_doc_length", "max_query_length", "score_threshold"],
    "/v2/rerank": ["model", "top_n", "max_tokens_per_doc", "priority", "return_documents", "rank_fields",
                   "instruction", "max_query_length", "score_threshold"],
    "/rerank": ["truncate", "truncation_direction", "raw_scores", "return_text", "model", "instruction"],
}


@pytest.mark.parametrize("route", list(NULLABLE))
def test_null_in_every_optional_field(client, route):
    body = {"query": Q, ("texts" if route == "/rerank" else "documents"): D}
    body.update({f: None for f in NULLABLE[route]})
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text


def test_extra_fields_are_ignored(client):
    r = client.post("/v1/rerank", json={"query": Q, "documents": D, "foo": 1, "user": "me", "parameters": {"a": 1}})
    assert r.status_code == 200
    r = client.post("/v2/rerank", json={"query": Q, "documents": D, "truncation": "END", "request_id": "x"})
    assert r.status_code == 200
    r = client.post("/rerank", json={"query": Q, "texts": D, "normalize": True})
    assert r.status_code == 200


def test_unpaired_surrogate_in_an_echoed_field(client):
    raw = b'{"query": "q", "documents": [{"text": "ok", "meta": "\\ud800"}]}'
    r = client.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["document"]["meta"] == "\ud800"
