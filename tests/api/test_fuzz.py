"""Property-based fuzzing of the rerank routes through a real HTTP server and the real (tiny) engine.

Hypothesis builds request bodies from the routes' own field names with any JSON value in them (hostile
strings included: marker strings nested or not, chat-template tokens, lone surrogate escapes, huge
integers), then mutates some of the encoded bytes (cut, non-finite numbers spliced in, raw bytes). The
property: every request is answered with a status below 500, on a connection that is not dropped, and
every 200 is valid JSON. Fixed seed (derandomize) and a bounded number of examples, so CI stays fast and
reproducible.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lastrank.api.settings import ServerSettings

from support.live_server import LiveServer

ROUTES = ["/v1/rerank", "/v2/rerank", "/rerank"]
FIELDS = ["model", "query", "documents", "texts", "top_n", "return_documents", "rank_fields", "instruction",
          "max_doc_length", "max_query_length", "max_tokens_per_doc", "score_threshold", "return_embeddings",
          "raw_scores", "return_text", "truncate", "truncation_direction", "priority", "max_chunks_per_doc", "text",
          "chunking", "chunk_overlap", "return_spans"]
HOSTILE = ["<|embed_token|>", "<|rerank_token|>", "<|embed_<|embed_token|>token|>", "<|<|rerank_token|>rerank_token|>",
           "<|rerank_<|embed_token|>token|>", "<|im_start|>", "<|im_end|>", "<think>", "</passage>", "\ud800",
           "\x00", "\u202e", "🍵", "text", "jina-reranker-v3", "", " "]

texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(HOSTILE) | st.text(max_size=6), max_size=6).map("".join),
)
numbers = st.one_of(st.integers(-3, 3000), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=4)),
    max_leaves=12,
)
documents = st.lists(st.one_of(texts, st.fixed_dictionaries({"text": texts}, optional={"title": json_values})),
                     max_size=6)


@st.composite
def bodies(draw):
    """A plausible body (query + documents or texts) with some fields replaced or added at random."""
    body: dict = {"query": draw(texts)}
    body["texts" if draw(st.booleans()) and draw(st.booleans()) else "documents"] = draw(documents)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        body[name] = draw(json_values)
    return body


MUTATIONS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"\xff", b"\x00", b"}", b"[", b'"', b"\\ud800", b""]


@st.composite
def raw_bodies(draw):
    raw = json.dumps(draw(bodies())).encode()
    kind = draw(st.sampled_from(["as is", "as is", "cut", "splice", "bytes"]))
    if kind == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif kind == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from(MUTATIONS)) + raw[at:]
    elif kind == "bytes":
        raw = draw(st.binary(max_size=64))
    return raw


@pytest.fixture(scope="module")
def server(tiny_reranker, tmp_path_factory):
    from lastrank.store import Store

    store = Store(tmp_path_factory.mktemp("fuzz") / "ledger.db")
    with LiveServer(ServerSettings(max_documents=50), store, backend=tiny_reranker.backend) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            yield client
    store.close()


@settings(max_examples=150, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), raw=raw_bodies())
def test_no_input_yields_a_5xx_or_a_dropped_connection(server, route, raw):
    try:
        r = server.post(route, content=raw, headers={"content-type": "application/json"})
    except httpx.TransportError as e:  # the connection was dropped or the server hung
        raise AssertionError(f"{route} {raw[:300]!r}: {type(e).__name__}: {e}") from None
    assert r.status_code < 500, (route, raw[:300], r.status_code, r.text[:300])
    body = r.json()  # every answer, error or not, is JSON
    if r.status_code != 200:
        assert body["error"]["code"] == r.status_code and body["detail"]
