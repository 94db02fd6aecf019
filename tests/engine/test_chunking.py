"""Chunk mode for long documents (engine/chunking.py): cutting, spans, aggregation, caps and usage.

Exact behaviour runs on the tiny Jina V3 checkpoint (float32, the real Qwen3 tokenizer). Random weights
cannot show relevance, so "found with chunking, lost with truncation" is shown with a deterministic toy
pointwise family (tests/support/keyword_backend.py: one token per word, raw score = how many query words the
pair's document part holds), built on engine/pairs.py like the real pointwise families.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from lastrank.engine.chunking import ChunkingBackend, ChunkPlan, boundary_rank, char_spans, split_windows
from lastrank.errors import InvalidRequestError
from lastrank.types import RerankOptions, RerankRequest

from support.keyword_backend import WORD, KeywordBackend

FILLER = ["The weather was mild that week.", "Shops opened late on Sundays.", "A river runs through the town.",
          "Trains were often delayed in winter.", "The library holds old maps.", "Bread is baked every morning."]


def page(n_filler: int, relevant: str | None = None, at_end: bool = True) -> str:
    sentences = [FILLER[i % len(FILLER)] for i in range(n_filler)]
    if relevant is not None:
        sentences = sentences + [relevant] if at_end else [relevant] + sentences
    return " ".join(sentences)


# ------------------------------------------------------------------------------------------------
# Cutting (pure)


def words(text):
    return [m.span() for m in WORD.finditer(text)]


def test_a_document_at_the_limit_is_one_chunk_and_one_token_more_is_two():
    text = " ".join(f"w{i}" for i in range(10))
    assert split_windows(text, words(text), 10, 2) == [(0, 10)]
    assert char_spans(text, words(text), [(0, 10)]) == [(0, len(text))]
    text11 = text + " w10"
    ranges = split_windows(text11, words(text11), 10, 2)
    assert len(ranges) == 2 and ranges[0][0] == 0 and ranges[-1][1] == 11
    assert all(e - s <= 10 for s, e in ranges)


@pytest.mark.parametrize("window,overlap", [(5, 0), (5, 4), (8, 3), (13, 1), (40, 39)])
def test_windows_cover_the_document_within_the_window_with_the_overlap(window, overlap):
    text = page(25)
    offs = words(text)
    ranges = split_windows(text, offs, window, overlap)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(offs)
    for (s, e), (s2, e2) in zip(ranges, ranges[1:]):
        assert 0 < e - s <= window
        assert s < s2 <= e  # progress, no gap
        assert e - s2 <= overlap  # the overlap never exceeds what was asked
    assert ranges[-1][1] - ranges[-1][0] <= window


def test_cuts_prefer_paragraphs_then_sentences_then_words():
    text = "aa bb cc. dd ee\n\nff gg hh ii jj kk"
    offs = words(text)  # aa bb cc. dd ee | ff gg ...
    assert [boundary_rank(text, offs[j][0]) for j in (1, 3, 5)] == [1, 2, 3]
    assert boundary_rank("abc", 1) == 0 and boundary_rank("文。次", 2) == 2
    # window 6: the last quarter is tokens 5..6; the paragraph break before ff (token 5) wins over words
    assert split_windows(text, offs, 6, 0)[0] == (0, 5)
    text = "aa bb cc dd. ee ff gg hh ii jj kk ll"
    assert split_windows(text, words(text), 5, 0)[0] == (0, 4)  # the sentence end after dd.


# ------------------------------------------------------------------------------------------------
# On the tiny Jina checkpoint (float32, real Qwen3 tokenizer)


LONG = ("Fleas are small insects that live on mammals. They can jump far. " * 6
        + "\n\nParis is the capital of France; it has museums. " * 5
        + "日本語のテキストです。もう一つの文があります。🎉🎉 " * 4)


def chunk_plan(backend, docs, window, **options) -> ChunkPlan:
    plan = backend.plan(RerankRequest(query="how long do fleas live", documents=docs,
                                      options=RerankOptions(max_doc_length=window, chunking="chunk", **options)))
    assert isinstance(plan, ChunkPlan)
    return plan


@pytest.mark.parametrize("window,overlap", [(16, 0), (16, 5), (7, 3), (3, 1)])
def test_chunks_are_exact_slices_cut_on_token_boundaries_that_decode_cleanly(tiny_reranker, window, overlap):
    backend = tiny_reranker.backend
    offsets = backend.token_offsets([LONG])[0]
    starts, ends = {a for a, _ in offsets}, {b for _, b in offsets}
    plan = chunk_plan(backend, ["short", LONG], window, chunk_overlap=overlap)
    texts = plan.inner.request.documents
    long_chunks = [(c, t) for c, t in zip(plan.chunks, texts) if c.doc == 1]
    assert len(long_chunks) > 1 and plan.usage.chunks == len(plan.chunks) == 1 + len(long_chunks)
    assert long_chunks[0][0].start == 0 and long_chunks[-1][0].end == len(LONG)
    tok = backend.tokenizer
    for c, text in long_chunks:
        assert text == LONG[c.start:c.end]  # the offsets slice the original string back exactly
        assert c.start in starts and c.end in ends  # cut on token boundaries
        ids = tok.encode(text)
        assert len(ids) <= window and c.tokens <= window
        assert "\ufffd" not in tok.decode(ids) and tok.decode(ids) == text  # no character split by a cut
    assert plan.usage.truncated_indices == []
    assert plan.usage.documents == 2 and plan.usage.doc_tokens[0] == 1


def test_the_family_never_truncates_a_chunk(tiny_reranker):
    plan = chunk_plan(tiny_reranker.backend, [LONG], 9, chunk_overlap=2)
    assert plan.inner.usage.doc_tokens == [c.tokens for c in plan.chunks]
    assert all(n <= 9 for n in plan.inner.usage.doc_tokens)
    assert plan.usage.prompt_tokens == plan.inner.usage.prompt_tokens == sum(b.n_tokens for b in plan.blocks)


def test_documents_under_the_limit_give_bit_identical_results(tiny_reranker):
    wrapped = tiny_reranker.backend
    assert isinstance(wrapped, ChunkingBackend)
    docs = ["Fleas live about a year.", "Paris is in France.", "", "日本語 🎉", LONG]
    kw = dict(query="how long do fleas live", documents=docs)
    options = RerankOptions(max_doc_length=512, return_embeddings=True)
    plain = wrapped.inner.rerank(RerankRequest(**kw, options=options))
    chunked = wrapped.rerank(RerankRequest(**kw, options=replace(options, chunking="chunk", return_spans=True)))
    assert [r.index for r in chunked.results] == [r.index for r in plain.results]
    for a, b in zip(chunked.results, plain.results):
        assert (a.relevance_score, a.raw_score, a.embedding) == (b.relevance_score, b.raw_score, b.embedding)
        assert a.span == (0, len(docs[a.index])) and b.span is None
    assert chunked.usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunked.usage.doc_tokens == plain.usage.doc_tokens and chunked.usage.chunks == len(docs)
    # truncate mode through the wrapper is the wrapped backend itself
    assert wrapped.rerank(RerankRequest(**kw, options=options)).results == plain.results


def test_a_document_scores_as_its_best_chunk_and_points_at_it(tiny_reranker):
    backend = tiny_reranker.backend
    docs = ["short", LONG, "Fleas live a year."]
    request = RerankRequest(query="how long do fleas live", documents=docs,
                            options=RerankOptions(max_doc_length=12, chunking="chunk", return_spans=True, return_embeddings=True))
    plan = backend.plan(request)
    outputs = backend.run_blocks(plan.blocks)
    per_chunk = backend.inner.scores(plan.inner, outputs)
    result = backend.finish(plan, outputs)
    assert sorted(r.index for r in result.results) == [0, 1, 2]
    for r in result.results:
        a, b = plan.doc_chunks[r.index]
        best = a + int(np.argmax(per_chunk.relevance[a:b]))
        assert r.relevance_score == float(per_chunk.relevance[best]) == float(per_chunk.relevance[a:b].max())
        assert r.embedding == per_chunk.embeddings[best].tolist()
        assert r.span == (plan.chunks[best].start, plan.chunks[best].end)
        assert docs[r.index][slice(*r.span)] == plan.inner.request.documents[best]
    assert result.usage.documents == 3 and result.usage.chunks == len(plan.chunks) > 3
    # top_n and score_threshold apply to documents, never to chunks
    top = backend.rerank(RerankRequest(query=request.query, documents=docs,
                                       options=RerankOptions(max_doc_length=12, chunking="chunk", top_n=2)))
    assert [r.index for r in top.results] == [r.index for r in result.results][:2]


def test_reranker_python_api_chunk_mode(tiny_reranker):
    out = tiny_reranker.rerank("fleas", ["short", LONG], max_doc_length=10, chunking="chunk", return_spans=True)
    assert all(len(r["span"]) == 2 for r in out)
    assert "span" not in tiny_reranker.rerank("fleas", ["short", LONG], max_doc_length=10)[0]


def test_caps_and_bad_settings_are_invalid_requests(tiny_reranker):
    backend = tiny_reranker.backend
    with pytest.raises(InvalidRequestError, match=r"chunk_overlap \(8 tokens\) must be smaller than the chunk window"):
        chunk_plan(backend, [LONG], 8, chunk_overlap=8)
    n = len(chunk_plan(backend, [LONG, LONG], 10, chunk_overlap=0).chunks)
    capped = ChunkingBackend(backend.inner, max_chunks=n - 1)
    with pytest.raises(InvalidRequestError, match=rf"makes {n} chunks .* limit of {n - 1} chunks per request"):
        chunk_plan(capped, [LONG, LONG], 10, chunk_overlap=0)
    assert len(chunk_plan(ChunkingBackend(backend.inner, max_chunks=n), [LONG, LONG], 10, chunk_overlap=0).chunks) == n
    # max_chunks_per_doc keeps each document's first chunks and reports the document as truncated
    plan = chunk_plan(backend, ["short", LONG], 10, chunk_overlap=0, max_chunks_per_doc=2)
    assert [c.doc for c in plan.chunks] == [0, 1, 1] and plan.usage.truncated_indices == [1]
    with pytest.raises(InvalidRequestError, match=r"indices 1\) need more than max_chunks_per_doc=2"):
        chunk_plan(backend, ["short", LONG], 10, chunk_overlap=0, max_chunks_per_doc=2, truncate=False)
    with pytest.raises(InvalidRequestError, match="query exceeds 2 tokens"):
        chunk_plan(backend, [LONG], 10, max_query_length=2, truncate=False)
    for bad in (dict(chunking="split"), dict(chunk_overlap=-1), dict(max_chunks_per_doc=0), dict(return_spans="yes")):
        with pytest.raises(InvalidRequestError):
            RerankOptions(**bad)


# ------------------------------------------------------------------------------------------------
# With a deterministic toy family: what chunking finds and truncation loses


def test_the_relevant_sentence_at_the_end_is_found_by_chunking_and_lost_by_truncation():
    backend = ChunkingBackend(KeywordBackend(max_doc_length=20))
    relevant = "Cat fleas usually live for about a year."
    docs = [page(8), page(12, relevant), page(2)]  # doc 1 holds the answer ~60 words in
    query = "how long do cat fleas live"
    truncated = backend.rerank(RerankRequest(query=query, documents=docs))
    assert truncated.usage.truncated_indices == [0, 1]
    assert truncated.results[0].relevance_score == 0.5  # sigmoid(0): no document's first 20 words match
    chunked = backend.rerank(RerankRequest(query=query, documents=docs,
                                           options=RerankOptions(chunking="chunk", return_spans=True)))
    best = chunked.results[0]
    assert best.index == 1 and best.raw_score == 3.0  # "cat", "fleas", "live"
    assert relevant in docs[1][slice(*best.span)]
    assert chunked.usage.truncated_indices == [] and chunked.usage.documents == 3
    assert chunked.usage.chunks > 3 and chunked.usage.ranked_passages == chunked.usage.chunks


def test_pointwise_chunk_score_equals_the_same_chunk_ranked_alone():
    backend = ChunkingBackend(KeywordBackend(max_doc_length=15))
    docs = [page(9, "Cat fleas live a year."), page(4, "Dogs have fleas too.", at_end=False)]
    request = RerankRequest(query="cat fleas live", documents=docs,
                            options=RerankOptions(chunking="chunk", return_spans=True, chunk_overlap=4))
    for r in backend.rerank(request).results:
        alone = backend.inner.rerank(RerankRequest(query="cat fleas live", documents=[docs[r.index][slice(*r.span)]]))
        assert alone.results[0].relevance_score == r.relevance_score
        assert alone.results[0].raw_score == r.raw_score


def test_usage_counts_the_tokens_run():
    toy = KeywordBackend(max_doc_length=10)
    backend = ChunkingBackend(toy)
    docs = [page(10), "short one"]
    result = backend.rerank(RerankRequest(query="fleas", documents=docs,
                                          options=RerankOptions(chunking="chunk", chunk_overlap=3)))
    assert result.usage.prompt_tokens == sum(len(s) for s in toy.scored)  # what really ran
    assert result.usage.documents == 2
    assert sum(result.usage.doc_tokens) == sum(len(s) - 2 for s in toy.scored)  # query word + separator
    assert result.usage.doc_tokens[0] > len(WORD.findall(docs[0]))  # overlaps are run (and counted) twice


def test_a_family_without_token_offsets_refuses_chunk_mode_clearly():
    backend = ChunkingBackend(KeywordBackend(offsets=False))
    with pytest.raises(InvalidRequestError, match="chunking is not available for this model \\(family keyword-toy\\)"):
        backend.plan(RerankRequest(query="q", documents=["d"], options=RerankOptions(chunking="chunk")))
    assert backend.rerank(RerankRequest(query="q", documents=["d"])).results[0].index == 0  # truncate still works


def test_the_scheduler_runs_chunked_requests_unchanged():
    from lastrank.engine.scheduler import Scheduler

    backend = ChunkingBackend(KeywordBackend(max_doc_length=20))
    docs = [page(12, "Cat fleas usually live for about a year."), page(3)]

    async def go():
        sched = Scheduler(backend)
        await sched.start()
        try:
            return await asyncio.gather(
                sched.submit(RerankRequest(query="cat fleas live", documents=docs,
                                           options=RerankOptions(chunking="chunk", return_spans=True))),
                sched.submit(RerankRequest(query="cat fleas live", documents=docs)))
        finally:
            await sched.stop()

    chunked, truncated = asyncio.run(go())
    direct = backend.rerank(RerankRequest(query="cat fleas live", documents=docs,
                                          options=RerankOptions(chunking="chunk", return_spans=True)))
    assert [(r.index, r.relevance_score, r.span) for r in chunked.results] == \
        [(r.index, r.relevance_score, r.span) for r in direct.results]
    assert chunked.results[0].index == 0 and truncated.results[0].relevance_score == 0.5


def test_a_character_longer_than_the_window_is_kept_whole_and_reported(tiny_reranker):
    """Only with a window of a few tokens: a rare CJK character is 3 byte-level tokens of Qwen3."""
    backend = tiny_reranker.backend
    doc = "\U0002000b" * 3
    assert len(backend.token_offsets([doc])[0]) == 9
    fits = chunk_plan(backend, [doc], 3, chunk_overlap=0)
    assert [(c.start, c.end, c.tokens) for c in fits.chunks] == [(0, 1, 3), (1, 2, 3), (2, 3, 3)]
    assert fits.usage.truncated_indices == []
    over = chunk_plan(backend, [doc, "x"], 2, chunk_overlap=0)
    assert [(c.start, c.end, c.tokens) for c in over.chunks] == [(0, 1, 3), (1, 2, 3), (2, 3, 3), (0, 1, 1)]
    assert over.usage.truncated_indices == [0]  # the family cut each of its chunks to 2 tokens


def test_a_family_that_spends_part_of_the_limit_gets_smaller_windows():
    """chunk_window: a family whose plan keeps max_doc_length - 2 own tokens (as a bi-encoder's [CLS]/[SEP])."""
    doc = page(12, "Cat fleas usually live for about a year.")
    backend = ChunkingBackend(KeywordBackend(max_doc_length=12, overhead=2))
    plan = backend.plan(RerankRequest(query="cat fleas", documents=[doc],
                                      options=RerankOptions(chunking="chunk", chunk_overlap=0)))
    assert max(c.tokens for c in plan.chunks) == 10 and plan.inner.usage.truncated_indices == []
    assert plan.usage.truncated_indices == []
    # a family that does not subtract them has its chunks cut: reported as truncated, never hidden
    wrong = ChunkingBackend(KeywordBackend(max_doc_length=12, overhead=2, window=False))
    plan = wrong.plan(RerankRequest(query="cat fleas", documents=[doc, "short"],
                                    options=RerankOptions(chunking="chunk", chunk_overlap=0)))
    assert plan.inner.usage.truncated_indices and plan.usage.truncated_indices == [0]
    with pytest.raises(InvalidRequestError, match="leaves no room"):
        backend.plan(RerankRequest(query="q", documents=[doc],
                                   options=RerankOptions(chunking="chunk", max_doc_length=2)))


def test_exact_limits_on_the_real_tokenizer(tiny_reranker):
    backend = tiny_reranker.backend
    n = len(backend.token_offsets([LONG])[0])
    at = chunk_plan(backend, [LONG], n, chunk_overlap=0)
    assert [(c.start, c.end, c.tokens) for c in at.chunks] == [(0, len(LONG), n)]
    over = chunk_plan(backend, [LONG], n - 1, chunk_overlap=0)
    assert len(over.chunks) == 2 and over.chunks[0].start == 0 and over.chunks[1].end == len(LONG)
    assert over.chunks[0].end == over.chunks[1].start  # no overlap asked: the windows meet
    assert sum(c.tokens for c in over.chunks) == n


def test_a_pointwise_family_scores_a_chunked_document_as_its_best_chunk_ranked_alone(tmp_path_factory):
    """float32, a real pointwise family (Qwen3-Reranker layout, tiny random weights): the document's score
    is, to 1e-5, the score of the text at its span ranked on its own."""
    from lastrank.families import load_backend
    from lastrank.checkpoints.causal import make_causal_checkpoint

    path = make_causal_checkpoint(tmp_path_factory.mktemp("causal") / "q", kind="qwen3-reranker", dtype="float32",
                                  seed=3)
    backend = ChunkingBackend(load_backend(str(path), device="cpu", dtype="float32"))
    docs = [LONG, "Fleas live about a year.", page(30, "Cat fleas usually live for about a year.")]
    request = RerankRequest(query="how long do fleas live", documents=docs,
                            options=RerankOptions(max_doc_length=120, chunking="chunk", return_spans=True))
    result = backend.rerank(request)
    assert result.usage.chunks > 4 and result.usage.truncated_indices == []
    for r in result.results:
        alone = backend.inner.rerank(RerankRequest(query=request.query, documents=[docs[r.index][slice(*r.span)]],
                                                   options=RerankOptions(max_doc_length=120))).results[0]
        assert abs(alone.raw_score - r.raw_score) <= 1e-5
        assert abs(alone.relevance_score - r.relevance_score) <= 1e-5


# ------------------------------------------------------------------------------------------------
# Grapheme clusters: a window never ends between a letter and its combining mark, an emoji and its variation
# selector, inside a ZWJ sequence or a flag, or between CR and LF; and every character is in some window, even
# one that no token covers (BERT's accent stripping drops U+0301 and U+FE0F from its tokens).

TRICKY = ("Le cafe\u0301 du coin. Un \u2764\ufe0f rouge! La famille \U0001F468\u200d\U0001F469\u200d\U0001F467 "
          "et le drapeau \U0001F1EB\U0001F1F7 ici.\r\nNe\u0301e a\u0300 \u0915\u094d\u0937 fin \U0001F44D\U0001F3FD ")


def graphemes_whole(text: str, spans: list[tuple[int, int]]) -> None:
    """Every span starts and ends on a grapheme boundary, and the spans together hold every character."""
    import regex

    bounds = {m.start() for m in regex.finditer(r"\X", text)} | {len(text)}
    covered = bytearray(len(text))
    for a, b in spans:
        assert a in bounds and b in bounds, (a, b, text[max(a - 2, 0):b + 2])
        covered[a:b] = b"\x01" * (b - a)
    missing = [i for i, c in enumerate(covered) if not c]
    assert not missing, [hex(ord(text[i])) for i in missing]
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)


def code_points(text):  # a byte-level BPE at its finest: one token per non-space code point
    return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]


def ascii_words(text):  # a tokenizer that drops what it cannot spell: accents, selectors, emoji
    return [m.span() for m in __import__("re").finditer(r"[A-Za-z.!]+", text)]


@pytest.mark.parametrize("tokenize", [code_points, ascii_words])
@pytest.mark.parametrize("window,overlap", [(5, 0), (5, 2), (6, 1), (7, 3), (9, 0)])  # the ZWJ family is 5 code points
def test_windows_end_on_grapheme_boundaries_and_hold_every_character(tokenize, window, overlap):
    text = TRICKY * 3
    offsets = tokenize(text)
    ranges = split_windows(text, offsets, window, overlap)
    assert len(ranges) > 3 and all(e - s <= window for s, e in ranges)
    spans = char_spans(text, offsets, ranges)
    graphemes_whole(text, spans)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s, e), (a, b) in zip(ranges, spans):  # each window still holds exactly its tokens
        assert a <= offsets[s][0] and offsets[e - 1][1] <= b
        assert all(not (a <= x < b) for x, _ in offsets[:s]) and all(not (a < y <= b) for _, y in offsets[e:])


def test_a_chunk_plan_keeps_graphemes_whole_on_the_real_tokenizer(tiny_reranker):
    """The real Qwen3 tokenizer gives U+FE0F and the parts of a ZWJ sequence tokens of their own (a cut between
    them is possible), and after its NFC normalisation no token's offsets cover the U+0301 of "cafe\u0301"."""
    backend = tiny_reranker.backend
    doc = TRICKY * 4
    offsets = backend.token_offsets([doc])[0]
    assert any(doc[a:b] == "\ufe0f" for a, b in offsets) and any(doc[a:b] == "\u200d" for a, b in offsets)
    assert not any(a <= doc.index("\u0301") < b for a, b in offsets)
    for window, overlap in ((8, 0), (9, 2), (12, 3), (16, 0)):  # the ZWJ family alone is 8 tokens
        plan = chunk_plan(backend, [doc], window, chunk_overlap=overlap)
        assert len(plan.chunks) > 4 and plan.usage.truncated_indices == []
        graphemes_whole(doc, [(c.start, c.end) for c in plan.chunks])
        assert plan.inner.request.documents == [doc[c.start:c.end] for c in plan.chunks]


def test_a_chunk_plan_holds_the_accents_a_bert_tokenizer_drops():
    """all-MiniLM-L6-v2 (real, ships offline): BERT's accent stripping gives U+0301 and U+FE0F no token."""
    from lastrank import Reranker

    backend = Reranker("minilm", dtype="float32").backend
    doc = TRICKY * 4
    offsets = backend.token_offsets([doc])[0]
    assert not any(a <= doc.index("\u0301") < b for a, b in offsets)  # in no token
    for window, overlap in ((2, 0), (3, 1), (5, 0)):
        plan = backend.plan(RerankRequest(query="coin", documents=[doc],
                                          options=RerankOptions(max_doc_length=window + 2, chunking="chunk", chunk_overlap=overlap)))
        assert len(plan.chunks) > 4
        graphemes_whole(doc, [(c.start, c.end) for c in plan.chunks])
