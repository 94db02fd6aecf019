"""Jina's object-form query, truncation warnings (meta.warnings + X-Lastrank-* headers), score_threshold,
and tie order, against the fake scheduler (tests/support/fake_scheduler.py: word-overlap scores, ties by index)."""

from __future__ import annotations

import pytest

Q = "capital of germany"
DOCS = ["paris is the capital of france", "berlin is the capital of germany", "germany exports cars", "bananas"]
# toy scores for Q: [2/3, 1, 1/3, 0]


def results_of(r) -> list[dict]:
    body = r.json()
    return body if isinstance(body, list) else body["results"]  # TEI's bare array, or a results list


# -- 1. Jina's object-form query ---------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/v1/rerank", "/rerank"])
def test_jina_object_query_is_its_text(client, fake_scheduler, route):
    plain = client.post(route, json={"query": Q, "documents": DOCS})
    obj = client.post(route, json={"query": {"text": Q}, "documents": DOCS})
    assert obj.status_code == 200, obj.text
    assert fake_scheduler.requests[-1].query == Q
    assert [x["index"] for x in obj.json()["results"]] == [x["index"] for x in plain.json()["results"]]
    # other fields of the object are ignored, like unknown fields anywhere
    r = client.post(route, json={"query": {"text": Q, "id": "q1"}, "documents": DOCS})
    assert r.status_code == 200 and fake_scheduler.requests[-1].query == Q


@pytest.mark.parametrize("query,needle", [
    ({"image": "https://example.com/cat.png"}, "image queries are not supported"),
    ({"text": "cats", "image": "aGVsbG8="}, "image queries are not supported"),
    ({"title": "no text"}, "needs a string 'text' field"),
    ({"text": 5}, "needs a string 'text' field"),
    ({"text": None}, "needs a string 'text' field"),
    (["capital"], "query must be a string or an object"),
    (12, "query must be a string or an object"),
    (True, "query must be a string or an object"),
    (None, "got null"),
])
def test_jina_other_query_shapes_are_422(client, query, needle):
    for route in ("/v1/rerank", "/rerank"):
        r = client.post(route, json={"query": query, "documents": DOCS})
        assert r.status_code == 422, (route, r.text)
        assert needle in r.json()["detail"] and r.json()["detail"].startswith("invalid request: query: ")


def test_object_query_with_blank_text_is_the_empty_query_400(client):
    r = client.post("/v1/rerank", json={"query": {"text": "  "}, "documents": DOCS})
    assert r.status_code == 400 and "query" in r.json()["detail"]


def test_cohere_v2_and_tei_take_the_same_query_forms(client, fake_scheduler):
    # one set of input forms on every route (dialects/base.py); the bad ones are 422 there too
    for route, body in (("/v2/rerank", {"documents": DOCS}), ("/rerank", {"texts": DOCS})):
        assert client.post(route, json={"query": {"text": Q}, **body}).status_code == 200
        assert fake_scheduler.requests[-1].query == Q
        assert client.post(route, json={"query": {"title": Q}, **body}).status_code == 422


def test_openapi_shows_both_query_forms(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"type": "string"} in body["properties"]["query"]["anyOf"]
    assert "score_threshold" in body["properties"]


# -- 2. Truncation warnings ----------------------------------------------------------------------------------

LONG = ["one two three four five six seven", "short", "a b c d e f g h i j", "tiny doc"]  # 8, 2, 11, 3 fake tokens


@pytest.mark.parametrize("route,body", [
    ("/v1/rerank", {"query": "two", "documents": LONG, "max_doc_length": 4}),
    ("/rerank", {"query": "two", "documents": LONG, "max_doc_length": 4}),
    ("/v2/rerank", {"query": "two", "documents": LONG, "max_tokens_per_doc": 4}),
])
def test_truncated_documents_are_reported(client, route, body):
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    meta = r.json()["meta"]
    assert meta["warnings"] == ["2 of 4 documents (indices 0, 2) were truncated to their first 4 tokens before ranking"]
    assert r.headers["x-lastrank-truncated-documents"] == "2"
    assert r.headers["x-lastrank-query-truncated"] == "false"


def test_tei_reports_truncation_in_headers(client):
    r = client.post("/rerank", json={"query": "two", "texts": LONG})  # default 2048: nothing cut
    assert isinstance(r.json(), list)
    assert r.headers["x-lastrank-truncated-documents"] == "0"
    assert r.headers["x-lastrank-query-truncated"] == "false"
    long = ["w " * 3000, "short"]
    r = client.post("/rerank", json={"query": "w", "texts": long, "truncate": True})
    assert r.status_code == 200 and isinstance(r.json(), list)
    assert r.headers["x-lastrank-truncated-documents"] == "1"


def test_no_truncation_means_empty_warnings_and_zero(client):
    for route in ("/v1/rerank", "/v2/rerank"):
        r = client.post(route, json={"query": Q, "documents": DOCS})
        assert r.json()["meta"]["warnings"] == []
        assert r.headers["x-lastrank-truncated-documents"] == "0"
    r = client.post("/v1/rerank", json={"query": Q, "documents": []})
    assert r.json()["meta"]["warnings"] == [] and r.headers["x-lastrank-truncated-documents"] == "0"


def test_query_truncation_and_unknown_indices(client, fake_scheduler, monkeypatch):
    submit = fake_scheduler.submit

    async def truncating_submit(request):
        result = await submit(request)
        result.usage.query_truncated = True
        return result

    monkeypatch.setattr(fake_scheduler, "submit", truncating_submit)
    # the plan settles which documents were cut (Usage.truncated_indices): "a b" is 3 fake tokens, at the
    # limit but not over it, and is not named
    r = client.post("/v1/rerank", json={"query": "a", "documents": ["a b", "a b c d"], "max_doc_length": 3,
                                        "max_query_length": 7})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["warnings"] == [
        "1 of 2 documents (indices 1) were truncated to their first 3 tokens before ranking",
        "the query was truncated to its first 7 tokens before ranking",
    ]
    assert r.headers["x-lastrank-query-truncated"] == "true"
    assert r.headers["x-lastrank-truncated-documents"] == "1"


def test_many_truncated_documents_name_ten_indices(client):
    docs = ["x y z"] * 12
    r = client.post("/v1/rerank", json={"query": "x", "documents": docs, "max_doc_length": 2})
    (warning,) = r.json()["meta"]["warnings"]
    assert warning.startswith("12 of 12 documents (indices 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more) were truncated")


def test_cohere_sdk_parses_the_meta_with_warnings(client):
    """The SDK's own model of the response (ApiMeta.warnings: list[str]) accepts what we send."""
    from cohere.types import RerankResponse
    from cohere.v2.types import V2RerankResponse

    r = client.post("/v2/rerank", json={"query": "two", "documents": LONG, "max_tokens_per_doc": 4})
    parsed = V2RerankResponse.model_validate(r.json())
    assert parsed.meta.warnings == r.json()["meta"]["warnings"] and len(parsed.meta.warnings) == 1
    assert [x.index for x in parsed.results] == [x["index"] for x in r.json()["results"]]
    r = client.post("/v1/rerank", json={"query": "two", "documents": LONG, "max_doc_length": 4})
    parsed = RerankResponse.model_validate(r.json())
    assert parsed.meta.warnings == r.json()["meta"]["warnings"]
    assert parsed.results[0].document.text == LONG[r.json()["results"][0]["index"]]


# -- 3. score_threshold ------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_score_threshold_keeps_scores_at_or_above(client, fake_scheduler, route):
    docs_key = "documents"  # /rerank without texts is Jina
    r = client.post(route, json={"query": Q, docs_key: DOCS, "score_threshold": 1 / 3})
    assert isinstance(r.json(), dict)
    assert r.status_code == 200, r.text
    got = results_of(r)
    assert [x["index"] for x in got] == [1, 0, 2]  # 1/3 itself is kept, 0 is dropped
    assert all(x["relevance_score"] >= 1 / 3 for x in got)
    assert fake_scheduler.requests[-1].options.top_n is None
    r = client.post(route, json={"query": Q, docs_key: DOCS, "score_threshold": 0.5})
    assert [x["index"] for x in results_of(r)] == [1, 0]
    r = client.post(route, json={"query": Q, docs_key: DOCS, "score_threshold": 2})  # an int is a number
    assert r.status_code == 200 and results_of(r) == []
    r = client.post(route, json={"query": Q, docs_key: DOCS, "score_threshold": -1})
    assert len(results_of(r)) == 4


def test_score_threshold_then_top_n(client, fake_scheduler):
    # rank -> drop below the threshold -> top_n of what is left
    r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS, "score_threshold": 0.3, "top_n": 2})
    assert [x["index"] for x in r.json()["results"]] == [1, 0]
    # one owner: both go to the backend's ranking rule (engine/backend.rank), which cuts threshold then top_n
    options = fake_scheduler.requests[-1].options
    assert (options.top_n, options.score_threshold) == (2, 0.3)
    r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS, "score_threshold": 0.9, "top_n": 3})
    assert [x["index"] for x in r.json()["results"]] == [1]  # fewer than top_n pass the threshold
    r = client.post("/v2/rerank", json={"query": Q, "documents": DOCS, "score_threshold": 0.0, "top_n": 0})
    assert r.json()["results"] == []
    r = client.post("/v1/rerank", json={"query": Q, "documents": DOCS, "score_threshold": None, "top_n": 2})
    assert [x["index"] for x in r.json()["results"]] == [1, 0]
    assert fake_scheduler.requests[-1].options.top_n == 2


def test_score_threshold_is_billed_for_every_document(client, store):
    r = client.post("/v2/rerank", json={"query": Q, "documents": DOCS, "score_threshold": 5.0})
    assert r.status_code == 200 and r.json()["results"] == []
    assert r.json()["meta"]["billed_units"]["search_units"] == 1
    assert store.get_usage(r.json()["id"]).documents == len(DOCS)


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank"])
@pytest.mark.parametrize("raw", [b'"0.5"', b"true", b"[0.5]", b"{}", b"1" + b"0" * 400])
def test_score_threshold_must_be_a_finite_number(client, route, raw):
    body = b'{"query": "capital of germany", "documents": ["a", "b"], "score_threshold": ' + raw + b"}"
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, (raw, r.status_code, r.text)
    assert r.json()["detail"].startswith("invalid request: score_threshold: ")


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank"])
@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_score_threshold_is_not_json(client, route, raw):
    # Not JSON at all: the strict parser refuses the body before any validation (issue 9).
    body = b'{"query": "capital of germany", "documents": ["a", "b"], "score_threshold": ' + raw + b"}"
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"], (raw, r.status_code, r.text)


def test_tei_ignores_score_threshold_as_an_unknown_field(client):
    r = client.post("/rerank", json={"query": Q, "texts": DOCS, "score_threshold": 0.9})
    assert r.status_code == 200 and len(r.json()) == 4


# -- 4. Ties -------------------------------------------------------------------------------------------------

def test_identical_documents_tie_and_keep_their_order(client):
    docs = ["berlin is the capital of germany", "bananas", "berlin is the capital of germany", "germany"]
    seen = {}
    for route, key in (("/v1/rerank", "documents"), ("/v2/rerank", "documents"), ("/rerank", "documents"),
                       ("/rerank", "texts")):
        body = {"query": Q, key: docs}
        if key == "texts":
            body["raw_scores"] = True
        calls = [client.post(route, json=body) for _ in range(2)]
        a, b = (results_of(c) for c in calls)
        score = "score" if key == "texts" else "relevance_score"
        assert [(x["index"], x[score]) for x in a] == [(x["index"], x[score]) for x in b]
        by_index = {x["index"]: x[score] for x in a}
        assert by_index[0] == by_index[2]
        seen[(route, key)] = [x["index"] for x in a]
    # every dialect keeps the engine's order (the fake breaks ties by index)
    assert set(map(tuple, seen.values())) == {(0, 2, 3, 1)}
