"""Long documents through the API: chunk mode (engine/chunking.py) on the tiny checkpoint, float32.

Jina route `chunking` / `chunk_overlap` / `return_spans`, Cohere v1 `max_chunks_per_doc` through the real
cohere.Client, Cohere v2 `max_tokens_per_doc` through cohere.ClientV2 with the server's --chunking chunk,
search units, ledger and limits, and the 4xx answers; jina-reranker-m0 in chunk mode with images on the Jina
route."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest

from lastrank.images import image_inputs
from lastrank.types import RerankOptions, RerankRequest

from support.live_server import LiveServer

MODEL = "jina-reranker-v3"
QUERY = "how long do fleas live"
LONG = ("Fleas are small insects that live on mammals. They can jump far. " * 6
        + "\n\nParis is the capital of France; it has museums. " * 5 + "A flea lives about a year. " * 3)
DOCS = ["Paris is in France.", LONG, "Fleas live about a year.", LONG[::-1]]


def expected(tiny_reranker, **options):
    return tiny_reranker.backend.rerank(RerankRequest(query=QUERY, documents=DOCS, options=RerankOptions(**options)))


def make(store, backend, **settings):
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    return TestClient(create_app(ServerSettings(**settings), store, backend=backend), raise_server_exceptions=False)


def test_jina_route_chunk_mode_with_spans(store, tiny_reranker):
    want = expected(tiny_reranker, max_doc_length=24, chunking="chunk", chunk_overlap=4, return_spans=True)
    with make(store, tiny_reranker.backend) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_doc_length": 24, "chunking": "chunk",
                                       "chunk_overlap": 4, "return_spans": True, "return_documents": False})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [(x["index"], x["relevance_score"], tuple(x["span"])) for x in body["results"]] == \
            [(x.index, x.relevance_score, x.span) for x in want.results]
        assert body["usage"]["prompt_tokens"] == want.usage.prompt_tokens
        assert body["meta"]["billed_units"]["search_units"] == math.ceil(want.usage.chunks / 100) == 1
        assert body["meta"]["warnings"] == [] and r.headers["X-Lastrank-Truncated-Documents"] == "0"
        # without return_spans: no span field; the default (truncate) is today's behaviour
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_doc_length": 24, "chunking": "chunk"})
        assert all("span" not in x for x in r.json()["results"])
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_doc_length": 24})
        truncated = expected(tiny_reranker, max_doc_length=24)
        assert [x["relevance_score"] for x in r.json()["results"]] == [x.relevance_score for x in truncated.results]
        assert r.headers["X-Lastrank-Truncated-Documents"] == "2"
    rows = store.usage_summary()
    assert sum(row["documents"] for row in rows) == 3 * len(DOCS)  # documents sent, never chunks


def test_many_chunks_count_as_search_units(store, tiny_reranker):
    with make(store, tiny_reranker.backend) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": [LONG] * 12, "max_doc_length": 8,
                                       "chunking": "chunk", "chunk_overlap": 0})
        assert r.status_code == 200, r.text
    chunks = tiny_reranker.backend.plan(RerankRequest(query=QUERY, documents=[LONG] * 12,
                                                      options=RerankOptions(max_doc_length=8, chunking="chunk", chunk_overlap=0))).usage.chunks
    assert chunks > 100 and r.json()["meta"]["billed_units"]["search_units"] == math.ceil(chunks / 100)


@pytest.mark.parametrize("body,status,text", [
    ({"chunking": "split"}, 422, "chunking"),
    ({"chunking": "chunk", "chunk_overlap": -1}, 422, "chunk_overlap"),
    ({"max_chunks_per_doc": 0}, 422, "max_chunks_per_doc"),
    ({"chunking": "chunk", "max_doc_length": 8, "chunk_overlap": 8}, 400, "must be smaller than the chunk window"),
    ({"chunking": "chunk", "max_doc_length": 4}, 400, "over the limit of 20 chunks per request"),
    ({"return_spans": "yes"}, 422, "return_spans"),
])
def test_bad_chunk_settings_are_4xx(store, tiny_reranker, body, status, text):
    with make(store, tiny_reranker.backend, max_chunks=20) as c:
        r = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, **body})
    assert r.status_code == status, r.text
    assert text in r.text


def live(store, backend, **settings):
    from lastrank.api.settings import ServerSettings

    return LiveServer(ServerSettings(**settings), store, backend=backend)


def test_cohere_v1_client_max_chunks_per_doc(store, tiny_reranker):
    """cohere.Client (v1) sends max_chunks_per_doc: chunk mode, at most that many windows per document."""
    import cohere

    _, key = store.create_key("co")
    want = expected(tiny_reranker, chunking="chunk", max_chunks_per_doc=2, max_doc_length=24)
    assert want.usage.truncated_indices == [1, 3]  # the long documents have more than 2 windows
    with live(store, tiny_reranker.backend) as srv:
        co = cohere.Client(api_key=key, base_url=srv.url)
        got = co.rerank(model=MODEL, query=QUERY, documents=DOCS, max_chunks_per_doc=2)
        # the v1 SDK sends no max_doc_length: the server's default window (2048) keeps every document whole
        whole = expected(tiny_reranker, chunking="chunk", max_chunks_per_doc=2)
        assert [(x.index, x.relevance_score) for x in got.results] == \
            [(x.index, x.relevance_score) for x in whole.results]
        # with the Jina route's max_doc_length the cap bites, and is reported
        import httpx

        r = httpx.post(srv.url + "/v1/rerank", headers={"Authorization": f"Bearer {key}"},
                       json={"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 2, "max_doc_length": 24})
        assert [(x["index"], x["relevance_score"]) for x in r.json()["results"]] == \
            [(x.index, x.relevance_score) for x in want.results]
        assert r.headers["X-Lastrank-Truncated-Documents"] == "2"
        assert "ranked on their first chunks only (max_chunks_per_doc)" in r.json()["meta"]["warnings"][0]


def test_cohere_v2_client_max_tokens_per_doc_is_the_window_with_server_chunking(store, tiny_reranker):
    import cohere

    _, key = store.create_key("co2")
    want = expected(tiny_reranker, chunking="chunk", max_doc_length=16)
    with live(store, tiny_reranker.backend, chunking="chunk") as srv:
        got = cohere.ClientV2(api_key=key, base_url=srv.url).rerank(model=MODEL, query=QUERY, documents=DOCS,
                                                                      max_tokens_per_doc=16)
    assert [(x.index, x.relevance_score) for x in got.results] == [(x.index, x.relevance_score) for x in want.results]
    assert got.meta.billed_units.search_units == 1


def test_lastrank_client_chunk_mode_matches_reranker(store, tiny_reranker):
    from lastrank.client import Client

    _, key = store.create_key("py")
    want = tiny_reranker.rerank(QUERY, DOCS, max_doc_length=24, chunking="chunk", chunk_overlap=4, return_spans=True)
    with live(store, tiny_reranker.backend) as srv:
        client = Client(srv.url, key)
        try:
            got = client.rerank(QUERY, DOCS, max_doc_length=24, chunking="chunk", chunk_overlap=4, return_spans=True)
            plain = client.rerank(QUERY, DOCS, max_doc_length=24)
        finally:
            client.close()
    assert [(r["index"], r["relevance_score"], list(r["span"])) for r in got] == \
        [(r["index"], r["relevance_score"], list(r["span"])) for r in want]
    assert all("span" not in r for r in plain)


def test_a_family_without_token_offsets_answers_chunk_mode_with_a_400(store):
    from support.keyword_backend import KeywordBackend

    with make(store, KeywordBackend(offsets=False)) as c:
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a b", "c"], "chunking": "chunk"})
        assert r.status_code == 400 and "chunking is not available for this model" in r.json()["detail"], r.text
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["a b", "c"]}).status_code == 200


def png(w, h, seed) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def m0_backend(tmp_path_factory):
    from lastrank.families import load_backend
    from lastrank.checkpoints.m0 import make_m0_checkpoint

    folder = make_m0_checkpoint(tmp_path_factory.mktemp("m0"), "tiny", seed=5, dtype="float32")
    return load_backend(str(folder), device="cpu", dtype="float32")


def test_jina_route_chunk_mode_with_an_image_query_and_image_documents(store, m0_backend):
    """jina-reranker-m0 in chunk mode through the real app: the engine's ranking; the image document is one
    chunk with no span (absent from its result), the long text document carries its best window's span."""
    from lastrank.engine.chunking import ChunkingBackend

    page, query = png(200, 140, 1), png(64, 64, 3)
    docs = ["", LONG, "Paris is in France."]
    want = ChunkingBackend(m0_backend).rerank(RerankRequest(query="", documents=docs,
                                                            options=RerankOptions(max_doc_length=24, chunking="chunk", return_spans=True),
                                                            images=image_inputs({0: page, "query": query})))
    assert want.usage.chunks > len(docs)  # LONG really is cut
    image_doc = {"image": base64.b64encode(page).decode()}
    with make(store, m0_backend) as c:
        r = c.post("/v1/rerank", json={"query": {"image": base64.b64encode(query).decode()},
                                       "documents": [image_doc, LONG, docs[2]], "max_doc_length": 24,
                                       "chunking": "chunk", "return_spans": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == [x.index for x in want.results]
    got = {x["index"]: x for x in body["results"]}
    for x in want.results:
        assert got[x.index]["relevance_score"] == pytest.approx(x.relevance_score, abs=1e-6)
    assert "span" not in got[0] and got[0]["document"] == image_doc
    assert tuple(got[1]["span"]) == next(x.span for x in want.results if x.index == 1)
    assert got[2]["span"] == [0, len(docs[2])]
    assert body["usage"]["total_tokens"] == want.usage.prompt_tokens  # image tokens and every window
    assert body["meta"]["billed_units"]["search_units"] == 1 and r.headers["X-Lastrank-Truncated-Documents"] == "0"
