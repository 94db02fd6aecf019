"""Chunk mode with images (engine/chunking.py, "Images") on a tiny random jina-reranker-m0 in float32.

An image document is one chunk, never cut: its scores are the unchunked request's. A long text document is
cut into windows and scores as the best of its windows ranked as separate documents, an image query going
unchanged into every pair. The inner request's images follow the chunks (an image document placed after a
long text document has a chunk index other than its document index, so a missed re-indexing shows up as a
wrong score). Agreement with the official compute_score is tests/families/test_jina_m0.py's.
"""

from __future__ import annotations


import numpy as np
import pytest

from lastrank.engine.chunking import ChunkingBackend, ChunkPlan
from lastrank.reranker import Reranker
from lastrank.errors import InvalidRequestError
from lastrank.checkpoints.m0 import make_m0_checkpoint
from lastrank.types import RerankOptions, RerankRequest

PIL = pytest.importorskip("PIL.Image")
# The family packs pairs into shared forwards, so a pair meets other neighbours chunked than unchunked: the same
# inputs, float32 rounding only (the project's bar against a reference is 1e-5).
ATOL = 1e-6

QUERY = "which page shows the harbour at night"
LONG = ("The old harbour was rebuilt after the storm. Fishing boats came back in spring.\n\n"
        "At night the lights of the harbour are reflected in the water, and the pier is lit. "
        "Tourists walk along the quay until late. The market opens at dawn and closes at noon. "
        "A ferry leaves for the islands twice a day, weather permitting.")
WINDOW = 16  # max_doc_length of the tests: LONG is several windows


def image(w, h, seed):
    return PIL.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    folder = make_m0_checkpoint(tmp_path_factory.mktemp("m0"), "tiny", seed=11, dtype="float32")
    return Reranker(str(folder), dtype="float32")


def by_index(result):
    return {r.index: r for r in result.results}


def mixed(query_image=None, **options) -> RerankRequest:
    """[image, LONG, short text, image]: the last image's chunk index is 3 + (LONG's chunks - 1)."""
    images = {0: image(200, 140, 1), 3: image(40, 120, 2)}
    if query_image is not None:
        images["query"] = query_image
    return RerankRequest(query=QUERY,
                         documents=["a label the model never reads", LONG, "The harbour at night.", ""],
                         options=RerankOptions(max_doc_length=WINDOW, **options), images=images)


@pytest.mark.parametrize("query_image", [None, image(64, 64, 3)], ids=["text query", "image query"])
def test_image_documents_score_as_unchunked_and_text_as_its_best_window(reranker, query_image):
    request = mixed(query_image, chunking="chunk", return_spans=True)
    plan = reranker.backend.plan(request)
    assert isinstance(plan, ChunkPlan)
    a, b = plan.doc_chunks[1]
    assert b - a >= 3 and plan.doc_chunks == [(0, 1), (a, b), (b, b + 1), (b + 1, b + 2)]
    chunked = by_index(reranker.rerank_request(request))
    unchunked = by_index(reranker.rerank_request(mixed(query_image)))

    # image documents: the unchunked pair (the same tokens and pixels), no span
    for d in (0, 3):
        assert chunked[d].relevance_score == pytest.approx(unchunked[d].relevance_score, abs=ATOL)
        assert chunked[d].raw_score == pytest.approx(unchunked[d].raw_score, abs=ATOL)
        assert chunked[d].span is None and "span" not in chunked[d].as_dict()
    assert chunked[3].document == ""  # the result echoes the label, as in truncate mode
    # a short text document is one chunk: itself, its span the whole text
    assert chunked[2].relevance_score == pytest.approx(unchunked[2].relevance_score, abs=ATOL)
    assert chunked[2].span == (0, len("The harbour at night."))

    # the long document: the best of its windows ranked as separate documents (with the same query image)
    windows = [LONG[c.start:c.end] for c in plan.chunks[a:b]]
    alone = reranker.rerank_request(RerankRequest(query=QUERY, documents=windows,
                                                  options=RerankOptions(max_doc_length=WINDOW),
                                                  images=None if query_image is None else {"query": query_image}))
    assert alone.usage.truncated_indices == []  # every window fits: nothing of it is cut by the family
    scores = np.array([r.relevance_score for r in sorted(alone.results, key=lambda r: r.index)])
    raws = np.array([r.raw_score for r in sorted(alone.results, key=lambda r: r.index)])
    best = int(np.argmax(scores))
    assert scores.max() - scores.min() > 100 * ATOL  # the windows really score differently
    assert chunked[1].relevance_score == pytest.approx(scores[best], abs=ATOL)
    assert chunked[1].raw_score == pytest.approx(raws[best], abs=ATOL)
    assert chunked[1].span == (plan.chunks[a + best].start, plan.chunks[a + best].end)


def test_inner_request_images_follow_the_chunks(reranker):
    q = image(64, 64, 3)
    request = mixed(q, chunking="chunk")
    plan = reranker.backend.plan(request)
    inner = plan.inner.request
    _, b = plan.doc_chunks[1]
    assert set(inner.images) == {0, b + 1, "query"}
    assert inner.images[0] is request.images[0] and inner.images[b + 1] is request.images[3]
    assert inner.images["query"] is request.images["query"]
    assert [c.image for c in plan.chunks] == [True] + [False] * (b - 1) + [False, True]
    # text-query request without image documents: no images at all in the inner request
    plain = reranker.backend.plan(RerankRequest(query=QUERY, documents=[LONG],
                                                options=RerankOptions(max_doc_length=WINDOW, chunking="chunk")))
    assert plain.inner.request.images is None


def test_usage_counts_image_tokens_and_every_window(reranker):
    q = image(64, 64, 3)
    request = mixed(q, chunking="chunk")
    plan = reranker.backend.plan(request)
    a, b = plan.doc_chunks[1]
    chunked = reranker.rerank_request(request).usage
    unchunked = reranker.rerank_request(mixed(q)).usage
    assert chunked.documents == 4 and chunked.chunks == (b - a) + 3
    assert chunked.truncated_indices == [] and unchunked.truncated_indices == [1]
    # image documents: their image tokens, as unchunked (a 200x140 image is more than the 16-token window, and is not cut)
    assert chunked.doc_tokens[0] == unchunked.doc_tokens[0] > WINDOW
    assert chunked.doc_tokens[3] == unchunked.doc_tokens[3] > 0
    assert chunked.doc_tokens[2] == unchunked.doc_tokens[2]
    # the long document: every window's tokens; the prompt: the other documents' pairs plus every window's pair
    windows = [LONG[c.start:c.end] for c in plan.chunks[a:b]]
    alone = reranker.rerank_request(RerankRequest(query=QUERY, documents=windows,
                                                  options=RerankOptions(max_doc_length=WINDOW), images={"query": q})).usage
    rest = reranker.rerank_request(RerankRequest(query=QUERY, documents=["", "The harbour at night.", ""],
                                                 options=RerankOptions(max_doc_length=WINDOW),
                                                 images={0: request.images[0], 2: request.images[3], "query": q})).usage
    assert chunked.doc_tokens[1] == sum(alone.doc_tokens)
    assert chunked.prompt_tokens == alone.prompt_tokens + rest.prompt_tokens


def test_only_images_chunked_is_truncate_mode(reranker):
    request = dict(query="", documents=["", "", ""],
                   images={0: image(90, 60, 1), 1: image(30, 200, 2), 2: image(56, 56, 4), "query": image(64, 64, 3)})
    chunked = reranker.rerank_request(RerankRequest(**request, options=RerankOptions(chunking="chunk",
                                                                                     return_spans=True)))
    unchunked = reranker.rerank_request(RerankRequest(**request))
    assert [(r.index, r.relevance_score, r.raw_score) for r in chunked.results] == \
        [(r.index, r.relevance_score, r.raw_score) for r in unchunked.results]
    assert all(r.span is None for r in chunked.results)
    assert chunked.usage.chunks == 3
    assert (chunked.usage.prompt_tokens, chunked.usage.doc_tokens) == (unchunked.usage.prompt_tokens,
                                                                       unchunked.usage.doc_tokens)


def test_caps_count_an_image_as_one_chunk_and_never_cut_it(reranker):
    plan = reranker.backend.plan(mixed(chunking="chunk"))
    a, b = plan.doc_chunks[1]
    total = (b - a) + 3
    capped = reranker.rerank_request(mixed(chunking="chunk", max_chunks_per_doc=1))
    assert capped.usage.truncated_indices == [1] and capped.usage.chunks == 4
    with pytest.raises(InvalidRequestError, match=r"1 document\(s\) \(indices 1\)"):
        reranker.rerank_request(mixed(chunking="chunk", max_chunks_per_doc=1, truncate=False))
    inner = reranker.backend.inner
    assert ChunkingBackend(inner, max_chunks=total).plan(mixed(chunking="chunk")).usage.chunks == total
    with pytest.raises(InvalidRequestError, match=f"makes {total} chunks"):
        ChunkingBackend(inner, max_chunks=total - 1).plan(mixed(chunking="chunk"))


def test_a_text_only_family_still_refuses_images_in_chunk_mode():
    from support.keyword_backend import KeywordBackend

    with pytest.raises(InvalidRequestError, match="ranks text only; the request has images"):
        ChunkingBackend(KeywordBackend()).plan(RerankRequest(query="q", documents=["d" * 50],
                                                             options=RerankOptions(chunking="chunk"),
                                                             images={0: image(10, 10, 0)}))
