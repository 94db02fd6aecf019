"""Long documents for every family: split a document into token windows, rank every window, score the
document by its best window, and say where that window is.

`ChunkingBackend(backend)` wraps any `Backend` and is one itself (plan / run_blocks / scores / finish), so
the scheduler, the server and `Reranker` use it unchanged. A request with `chunking="truncate"` (the
default) goes straight to the wrapped backend: same plan, same outputs, same result. With
`chunking="chunk"`:

1. The window is what the family keeps of a document's own tokens under the request's `max_doc_length`
   (else its `Capabilities.max_doc_length`; `Backend.limits(request)` owns it): `Backend.chunk_window(request,
   limits)`, that limit itself unless
   the family spends part of it on tokens of its own (special tokens, a document prompt). Each
   document's tokens come from the family's own tokenizer (`Backend.token_offsets`, with the character
   span of every token). A document of at most `window` tokens is one chunk: the document itself.
2. A longer document is cut into windows of at most `window` tokens, consecutive windows sharing
   `chunk_overlap` tokens (default window // 8; an overlap >= the window is a 400). A cut is made only
   between tokens that share no character and have a grapheme boundary between them (so neither a
   multi-byte character nor a user-perceived one - a letter and its combining accent, an emoji and its
   variation selector, a ZWJ sequence - is ever split; `grapheme_starts`), and within the
   last quarter of a window the cut goes to the best boundary there: a paragraph break (blank line) over a
   line break or sentence end over a space between words over anything else, the latest of equals. The
   next window starts at the best boundary inside the overlap (the earliest of equals). Each chunk's text
   is exactly `document[start:end]` (`char_spans`: from its first token to its last, widened to grapheme
   boundaries, so the windows together hold every character of the document, even one no token covers,
   such as an accent a BERT tokenizer strips, or the spaces at a cut); a chunk that the
   tokenizer reads back as more than `window` tokens (a BPE merge across the cut) is cut again with a
   smaller window, so no chunk is truncated by the family. The one exception, possible only with a window
   of a few tokens: a single character that takes more tokens than the window is kept whole in its chunk,
   the family truncates that chunk, and the document is reported as truncated.
3. Every chunk is ranked as a document by the wrapped backend's own plan: a listwise family (Jina V3)
   sees the chunks as passages of one prompt (in document order, chunks of a document consecutive), a
   pointwise family scores each chunk with the query on its own.
4. A document's relevance_score, raw_score and embedding are its best chunk's (the highest
   relevance_score; the earliest chunk on a tie), as Cohere's API scores chunked documents. With
   `return_spans`, each result carries that chunk's [start, end) character offsets in the original
   document (`RankedDocument.span`). Ordering, score_threshold and top_n then follow the one rule of
   engine/backend.py `rank`, over documents (never over chunks).

Images (multimodal families, `Capabilities.images`; a text-only family refuses a request with images
before anything else, engine/backend.py `check_images`):
  - an image document is one chunk: the image itself, never cut, never tokenized here (its text in
    `documents` is only a label). Its relevance_score and raw_score are that one chunk's, so they equal the
    unchunked request's. With `return_spans` its span is None (absent from the API's JSON): a span is a
    range of characters of a text the model read, and the model read no text of an image document; the
    label was not ranked, and [0, len(label)) would claim it was. A client that reads spans must treat a
    missing span as "the whole input" (as the CLI and lastrank.client already do).
  - an image query goes unchanged into the inner request, so the wrapped backend pairs it with every chunk
    as it pairs it with every document in truncate mode;
  - the inner request's `images` are re-indexed to chunk indices: an image document d becomes chunk
    doc_chunks[d][0] (chunks of a document are consecutive), "query" stays "query".
  Usage counts an image document's tokens as the family's plan does (its image tokens, in doc_tokens and in
  prompt_tokens); an image document is one of `chunks`, never truncated, and counts against `max_chunks`.

Limits: `max_chunks_per_doc` keeps a document's first N chunks (the rest of the document is not ranked,
and the document is reported as truncated; with truncate=False it is a 400, as any truncation is); the
wrapper's `max_chunks` caps the chunks of one request (a 400 past it), so one request cannot explode.

Usage (what is billed and limited), for a chunked request:
  documents        the documents the client sent (what documents-per-minute limits count)
  chunks           the passages actually ranked (a document under the limit counts as one)
  prompt_tokens    the tokens of every model input actually run (all chunks, templates, repeated queries)
  doc_tokens[i]    the tokens of document i actually run, summed over its chunks (overlaps counted twice)
  truncated_indices  documents not fully ranked (cut by max_chunks_per_doc)
  Search units (Cohere's meta.billed_units) count chunks as documents, as Cohere does:
  ceil(Usage.ranked_passages / 100), where ranked_passages is `chunks` for a chunked request and
  `documents` otherwise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from lastrank.engine.backend import (Backend, Block, Capabilities, EncodedRequest, Limits, RerankPlan, Scores,
                                     check_images, name_indices)
from lastrank.errors import InvalidRequestError
from lastrank.types import RerankRequest, RerankResult, Usage

DEFAULT_MAX_CHUNKS = 10_000  # chunks one request may produce (ChunkingBackend(max_chunks=...))
OVERLAP_FRACTION = 8  # default chunk_overlap = window // 8
SEARCH_FRACTION = 4  # the cut is searched for in the last window // 4 tokens of a window
RECUT_TRIES = 8  # times a document is cut again with a smaller window when a chunk re-tokenizes too long

Offsets = list[tuple[int, int]]

# Characters that end a sentence; a closing quote or bracket may follow them.
_SENTENCE_END = frozenset(".!?\u2026\u3002\uff01\uff1f")  # . ! ? … 。 ！ ？
_NO_SPACE_SENTENCE_END = frozenset("\u3002\uff01\uff1f")  # CJK full stops need no space after them
_CLOSERS = frozenset("\"')]}\u00bb\u201d\u2019\u300d\u300f")


# ------------------------------------------------------------------------------------------------
# Cutting (pure)


def boundary_rank(text: str, pos: int) -> int:
    """How good a cut at character `pos` of `text` is: 3 a paragraph break (two line breaks in the
    whitespace around it), 2 a line break or a sentence end, 1 a space between words, 0 inside a word."""
    a = pos
    while a > 0 and text[a - 1].isspace():
        a -= 1
    b = pos
    while b < len(text) and text[b].isspace():
        b += 1
    newlines = text.count("\n", a, b)
    if newlines >= 2:
        return 3
    if newlines:
        return 2
    k = a
    while k > 0 and text[k - 1] in _CLOSERS:
        k -= 1
    if k > 0 and text[k - 1] in _SENTENCE_END and (b > a or text[k - 1] in _NO_SPACE_SENTENCE_END):
        return 2
    return 1 if b > a else 0


@functools.cache
def _grapheme_pattern():
    import regex  # a dependency (pyproject.toml), imported only once a non-ASCII document is cut

    return regex.compile(r"\X")


def grapheme_starts(text: str) -> bytearray:
    """1 at each position of `text` where a grapheme cluster starts, and at len(text); 0 elsewhere. Clusters are
    Unicode's extended grapheme clusters (UAX #29) as the `regex` module's \\X finds them: a base character
    with its combining marks, an emoji with its variation selector, skin tone or ZWJ sequence, a flag's two
    regional indicators, CR LF."""
    if text.isascii() and "\r\n" not in text:  # every ASCII character is a cluster of its own, but CR LF
        return bytearray(b"\x01") * (len(text) + 1)
    marks = bytearray(len(text) + 1)
    for m in _grapheme_pattern().finditer(text):
        marks[m.start()] = 1
    marks[len(text)] = 1
    return marks


def _clean(offsets: Offsets, j: int, marks: bytearray) -> bool:
    """A cut before token j leaves whole characters on both sides: the tokens share no character, and a
    grapheme boundary lies between them (`marks`: grapheme_starts of the text)."""
    end, start = offsets[j - 1][1], offsets[j][0]
    return start >= end and any(marks[end:start + 1])


def split_windows(text: str, offsets: Offsets, window: int, overlap: int,
                  marks: bytearray | None = None) -> list[tuple[int, int]]:
    """Token ranges [s, e) of the chunks of one document (module docstring, step 2). A document of at most
    `window` tokens is one range. Requires 0 <= overlap < window. `marks`: grapheme_starts(text), when the
    caller has it already."""
    n = len(offsets)
    if n <= window:
        return [(0, n)]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap {overlap} must be in [0, {window})")
    marks = grapheme_starts(text) if marks is None else marks
    ranges: list[tuple[int, int]] = []
    s = 0
    while True:
        hard = s + window
        if hard >= n:
            ranges.append((s, n))
            return ranges
        # The cut: before token j, for j in the last quarter of the window; best boundary, latest of equals.
        lo = s + max(1, window - window // SEARCH_FRACTION)
        best_rank, j = -1, None
        for c in range(hard, lo - 1, -1):
            if _clean(offsets, c, marks):
                r = boundary_rank(text, offsets[c][0])
                if r > best_rank:
                    best_rank, j = r, c
                    if r == 3:
                        break
        if j is None:  # no clean cut near the end: the latest clean one in the window, else the first after it
            j = next((c for c in range(lo - 1, s, -1) if _clean(offsets, c, marks)), None)
            if j is None:  # one character takes more tokens than the window: keep it whole (module docstring)
                j = next((c for c in range(hard + 1, n) if _clean(offsets, c, marks)), n)
                if j == n:
                    ranges.append((s, n))
                    return ranges
        ranges.append((s, j))
        # The next start: inside the overlap, at its best boundary (the earliest of equals); always past s.
        # (No clean start inside the overlap: the window after the cut starts at the cut.)
        best_rank, k = -1, j
        for c in range(max(j - overlap, s + 1), j):
            if _clean(offsets, c, marks):
                r = boundary_rank(text, offsets[c][0])
                if r > best_rank:
                    best_rank, k = r, c
        s = k


def char_spans(text: str, offsets: Offsets, ranges: list[tuple[int, int]],
               marks: bytearray | None = None) -> list[tuple[int, int]]:
    """[start, end) in characters of each token range of one document (split_windows' ranges, in order, or the
    first of them); the whole text for a document kept whole. Together the windows hold every character, and
    each starts and ends on a grapheme boundary: a window ends at the first boundary after its last token (an
    accent no token covers stays with its letter), starts at the last boundary before its first token, or,
    when it starts at the previous window's cut (no overlap), where that window ends (the characters between
    two tokens, spaces or a dropped mark, go to the earlier window); the first starts at 0, the last ends at
    len(text). `marks`: as for split_windows."""
    n = len(offsets)
    if len(ranges) == 1 and ranges[0] == (0, n):
        return [(0, len(text))]
    marks = grapheme_starts(text) if marks is None else marks
    spans: list[tuple[int, int]] = []
    for s, e in ranges:
        start = 0
        if spans:
            start = offsets[s][0]
            while not marks[start]:
                start -= 1
            start = min(start, spans[-1][1])
        end = len(text)
        if e < n:
            end = offsets[e - 1][1]
            while not marks[end]:
                end += 1
        spans.append((start, end))
    return spans


# ------------------------------------------------------------------------------------------------
# The wrapper


@dataclass(frozen=True)
class Chunk:
    doc: int  # position in request.documents
    start: int  # character offsets of the chunk in that document: text == document[start:end]
    end: int
    tokens: int  # its token count as the family reads it (the family's tokenizer on the chunk alone); 0: an image
    image: bool = False  # an image document, whole (start, end: its label, which the family does not read)


@dataclass
class ChunkPlan(RerankPlan):
    """A chunk-mode plan: `blocks` are the wrapped backend's blocks over the chunks (`inner.request`)."""

    inner: RerankPlan | None = None
    chunks: list[Chunk] = field(default_factory=list)
    doc_chunks: list[tuple[int, int]] = field(default_factory=list)  # per document: its chunks [a, b)


class ChunkingBackend(Backend):
    """`backend` with chunk mode added (module docstring). Everything else is the wrapped backend's: a
    request in truncate mode, `limits`, `run_blocks`, `warmup`, and any attribute the wrapper does not
    have (`tokenizer`, `model`, `device`, ...)."""

    def __init__(self, backend: Backend, max_chunks: int = DEFAULT_MAX_CHUNKS):
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
        self.inner = backend
        self.max_chunks = max_chunks

    # What the wrapped backend is (Backend declares these as class attributes, so they are forwarded here).
    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def path(self) -> Path | None:
        return self.inner.path

    @property
    def random_weights(self) -> bool:
        return self.inner.random_weights

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def token_offsets(self, texts: list[str]) -> list[Offsets]:
        return self.inner.token_offsets(texts)

    def limits(self, request: RerankRequest) -> Limits:
        return self.inner.limits(request)

    def chunk_window(self, request: RerankRequest, limits: Limits) -> int:
        return self.inner.chunk_window(request, limits)

    def encode_request(self, request: RerankRequest, limits: Limits) -> EncodedRequest:
        return self.inner.encode_request(request, limits)

    def warmup(self) -> None:
        self.inner.warmup()

    def run_blocks(self, blocks: list[Block]) -> list[Any]:
        return self.inner.run_blocks(blocks)

    # -- plan ------------------------------------------------------------------------------------

    def plan(self, request: RerankRequest) -> RerankPlan:
        check_images(request, self.inner.capabilities)  # every served / Python-API backend passes here
        options = request.options
        if options.chunking != "chunk" or not request.documents:
            return self.inner.plan(request)
        window = self._window(request)
        overlap = options.chunk_overlap if options.chunk_overlap is not None else window // OVERLAP_FRACTION
        if overlap >= window:
            raise InvalidRequestError(f"chunk_overlap ({overlap} tokens) must be smaller than the chunk window "
                                      f"({window} tokens of a document under max_doc_length)")
        chunks, doc_chunks, capped = self._chunks(request, window, overlap)
        if capped and not options.truncate:
            raise InvalidRequestError(
                f"{len(capped)} document(s) (indices {name_indices(capped)}) need more than max_chunks_per_doc="
                f"{options.max_chunks_per_doc} chunks of {window} tokens; send truncate=true to rank only their "
                "first chunks, or a larger max_chunks_per_doc")
        if len(chunks) > self.max_chunks:
            raise InvalidRequestError(
                f"chunking this request makes {len(chunks)} chunks of up to {window} tokens, over the limit of "
                f"{self.max_chunks} chunks per request; send fewer or shorter documents, a max_chunks_per_doc, "
                "or a larger max_doc_length")
        inner = self.inner.plan(self._inner_request(request, chunks))
        iu = inner.usage
        if not options.truncate and iu.query_truncated:
            raise InvalidRequestError(f"the query exceeds {iu.max_query_length} tokens; send truncate=true "
                                      "(or a shorter query) to have it truncated")
        # A chunk the family still cut loses text: one character over the window (or no smaller window
        # fitted), or a family whose chunk_window overstates what it keeps (flagged under the window).
        flagged = set(iu.truncated_indices)
        lost = {c.doc for i, c in enumerate(chunks)
                if not c.image and (c.tokens > window or (i in flagged and c.tokens < window))}
        tokens_run = iu.doc_tokens if len(iu.doc_tokens) == len(chunks) else [c.tokens for c in chunks]
        usage = Usage(
            documents=len(request.documents),
            prompt_tokens=iu.prompt_tokens,
            blocks=iu.blocks,
            truncated_indices=sorted(set(capped) | lost),
            query_truncated=iu.query_truncated,
            doc_tokens=[int(sum(tokens_run[a:b])) for a, b in doc_chunks],
            max_doc_length=iu.max_doc_length or window,
            max_query_length=iu.max_query_length,
            chunks=len(chunks),
        )
        return ChunkPlan(request, inner.blocks, usage, inner=inner, chunks=chunks, doc_chunks=doc_chunks)

    def _chunks(self, request: RerankRequest, window: int, overlap: int
                ) -> tuple[list[Chunk], list[tuple[int, int]], list[int]]:
        """The request's documents cut into windows (module docstring) -> (chunks, per document its chunks
        [a, b), the documents cut short at max_chunks_per_doc)."""
        images = request.images or {}
        docs = list(request.documents)
        # An image document is never cut (module docstring, "Images"): no offsets, one range of no tokens.
        text_docs = [d for d in range(len(docs)) if d not in images]
        offsets: list[Offsets] = [[] for _ in docs]
        for d, offs in zip(text_docs, self._offsets([docs[d] for d in text_docs])):
            offsets[d] = offs
        # grapheme boundaries of each document that is cut, found once (a pass over its text)
        marks = {d: grapheme_starts(docs[d]) for d in text_docs if len(offsets[d]) > window}
        ranges = [split_windows(text, offs, window, overlap, marks.get(d))
                  for d, (text, offs) in enumerate(zip(docs, offsets))]
        ranges, counts = self._fit(docs, offsets, marks, ranges, window, overlap)
        chunks: list[Chunk] = []
        doc_chunks: list[tuple[int, int]] = []
        capped: list[int] = []
        for d, (text, offs, rs) in enumerate(zip(docs, offsets, ranges)):
            if d in images:
                doc_chunks.append((len(chunks), len(chunks) + 1))
                chunks.append(Chunk(d, 0, len(text), 0, image=True))
                continue
            tokens = counts.get(d) or [e - s for s, e in rs]
            cap = request.options.max_chunks_per_doc
            if cap is not None and len(rs) > cap:
                rs = rs[:cap]
                capped.append(d)
            a = len(chunks)
            chunks.extend(Chunk(d, *span, n) for span, n in zip(char_spans(text, offs, rs, marks.get(d)), tokens))
            doc_chunks.append((a, len(chunks)))
        return chunks, doc_chunks, capped

    def _inner_request(self, request: RerankRequest, chunks: list[Chunk]) -> RerankRequest:
        """The request the wrapped backend plans: one document per chunk. Chunks of documents kept whole are the
        original strings, so a request with no long document plans (and scores) exactly as in truncate mode."""
        docs = request.documents
        texts = [docs[c.doc] if (c.start, c.end) == (0, len(docs[c.doc])) else docs[c.doc][c.start:c.end]
                 for c in chunks]
        # The ranking options are the outer request's (ChunkingBackend.finish ranks the documents): the inner
        # one ranks every chunk, and its chunks fit the window (a query that does not is refused in plan for
        # truncate=False).
        options = replace(request.options, top_n=None, score_threshold=None, truncate=True, chunking="truncate",
                          return_spans=False)
        return replace(request, documents=texts, options=options,
                       images=self._chunk_images(request.images or {}, chunks))

    @staticmethod
    def _chunk_images(images: dict, chunks: list[Chunk]) -> dict | None:
        """The request's images keyed for the inner request: "query" as is, an image document by its one chunk."""
        out = {i: images[c.doc] for i, c in enumerate(chunks) if c.image}
        if "query" in images:
            out["query"] = images["query"]
        return out or None

    def _window(self, request: RerankRequest) -> int:
        try:
            window = self.inner.chunk_window(request, self.inner.limits(request))
        except NotImplementedError:
            raise self._unavailable() from None
        if window < 1:
            raise InvalidRequestError(f"max_doc_length leaves no room for a document's own tokens with this model "
                                      f"(family {self.capabilities.family}); send a larger max_doc_length")
        return window

    def _unavailable(self) -> InvalidRequestError:
        return InvalidRequestError(f"chunking is not available for this model (family {self.capabilities.family}) "
                                   "yet; send chunking=\"truncate\"")

    def _offsets(self, texts: list[str]) -> list[Offsets]:
        try:
            offsets = self.inner.token_offsets(texts)
        except NotImplementedError:
            raise self._unavailable() from None
        if len(offsets) != len(texts):
            raise RuntimeError(f"token_offsets returned {len(offsets)} lists for {len(texts)} texts. This is a bug.")
        return offsets

    def _fit(self, docs: list[str], offsets: list[Offsets], marks: dict[int, bytearray],
             ranges: list[list[tuple[int, int]]], window: int, overlap: int
             ) -> tuple[list[list[tuple[int, int]]], dict[int, list[int]]]:
        """Re-tokenize every cut chunk on its own; a document with a chunk over `window` tokens (a merge
        across the cut) is cut again with a window smaller by the excess, until all fit (RECUT_TRIES).
        -> (ranges, {document: token count of each of its chunks as the family will read it}) for the
        documents that were cut."""
        ranges = list(ranges)
        counts: dict[int, list[int]] = {}
        todo = [d for d, rs in enumerate(ranges) if len(rs) > 1]
        shrink = {d: 0 for d in todo}
        for attempt in range(RECUT_TRIES + 1):
            if not todo:
                break
            spans = [(d, span) for d in todo for span in char_spans(docs[d], offsets[d], ranges[d], marks[d])]
            found = self._offsets([docs[d][a:b] for d, (a, b) in spans])
            for d in todo:
                counts[d] = []
            for (d, _), o in zip(spans, found):
                counts[d].append(len(o))
            if attempt == RECUT_TRIES:
                break
            again = []
            for d in todo:
                extra = max(counts[d]) - window
                if extra <= 0:
                    continue
                shrink[d] += extra
                w = window - shrink[d]
                if w < 1:
                    continue  # nothing smaller fits: keep this cut (the family truncates the long chunk)
                ranges[d] = split_windows(docs[d], offsets[d], w, min(overlap, w - 1), marks[d])
                again.append(d)
            todo = again
        return ranges, counts

    # -- scores / finish ---------------------------------------------------------------------------

    def scores(self, plan: RerankPlan, outputs: list[Any]) -> Scores:
        if not isinstance(plan, ChunkPlan):
            return self.inner.scores(plan, outputs)
        s = self.inner.scores(plan.inner, outputs)
        best = np.empty(len(plan.doc_chunks), dtype=np.int64)
        for d, (a, b) in enumerate(plan.doc_chunks):
            rel = np.asarray(s.relevance[a:b], dtype=np.float64)
            # the highest relevance, the earliest chunk on a tie; all NaN: the first chunk (rank drops NaN)
            best[d] = a + (int(np.nanargmax(rel)) if not np.all(np.isnan(rel)) else 0)
        return Scores(
            relevance=np.asarray(s.relevance)[best],
            raw=np.asarray(s.raw)[best],
            embeddings=None if s.embeddings is None else s.embeddings[best],
            spans=[None if plan.chunks[c].image else (plan.chunks[c].start, plan.chunks[c].end) for c in best],
        )

    def finish(self, plan: RerankPlan, outputs: list[Any]) -> RerankResult:
        if not isinstance(plan, ChunkPlan):
            return self.inner.finish(plan, outputs)
        return super().finish(plan, outputs)
