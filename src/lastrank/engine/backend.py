"""The seam every model family plugs into: `Backend`, its declared `Capabilities`, and the one ranking rule.

A backend turns a `RerankRequest` into work the scheduler can interleave with other requests' work, runs
that work on its model, and turns the outputs back into scores:

    plan(request)        -> RerankPlan      the engine's template (pure CPU): limits, no documents, the
                                            truncate=False refusal and the Usage, once, around the hook
    encode_request(request, limits) -> EncodedRequest   the family's part of plan: tokenise, truncate, cut
                                                        into blocks (may raise InvalidRequestError)
    run_blocks(blocks)   -> list[outputs]   the model; blocks may come from several requests
    scores(plan, outs)   -> Scores          one relevance score (and raw score, embedding) per document
    finish(plan, outs)   -> RerankResult    scores, then `rank` (ordering, score threshold, top_n)
    limits(request)      -> Limits          the request's effective max_doc / max_query tokens: the one owner
    token_offsets(texts) -> list[list[(start, end)]]   the family's tokenizer, for chunking (see below)
    chunk_window(request, limits) -> int                own tokens a document keeps (default: limits.max_doc)

Long documents (request.options.chunking == "chunk") are handled once for every family by the wrapper in
engine/chunking.py, on top of these methods. What it needs from a family:
  - `token_offsets(texts)`: for each text, one (start, end) character span [start, end) in that text per
    token of the text's own tokenization as the family's plan makes it for a document (in order; without
    the special tokens, prompt or template the family adds around it). Spans of consecutive tokens may
    share characters (a byte-level token holding part of a multi-byte character); the chunker cuts only
    where they do not. The base class raises NotImplementedError, and a
    chunk-mode request to such a family is a clear 400 ("chunking is not available for this model").
  - `chunk_window(request, limits)`: how many of those own tokens a document keeps under
    `limits = self.limits(request)` before the family truncates it. The default is `limits.max_doc` (jina-v3, which counts only the document's tokens); a family that spends part of the
    limit on its own tokens (a bi-encoder's [CLS]/[SEP] and document prompt; a cross-encoder's pair
    template) overrides it to subtract them, so no chunk is truncated.

The scheduler, the server, the dialects and eval see only this interface and `Capabilities`; nothing
family-specific lives outside the family's module (lastrank/families/<family>.py).

Scores users can trust, one rule for every family (Capabilities.score):
  - "cosine":  relevance_score is a cosine in [-1, 1] exactly as the official code returns it
               (Jina Reranker V3, bi-encoders); raw_score is the same cosine.
  - "sigmoid": relevance_score is sigmoid(raw_score) in [0, 1], raw_score the classifier's logit (or logit
               difference) as the official code computes it (cross-encoders, causal-LM rerankers).
  Never a double sigmoid: a family reports raw logits and the rule above applies the sigmoid once.
  Where a wire format wants a score in [0, 1] (TEI without raw_scores), `Capabilities.unit_score` maps the
  relevance score there: (1 + cosine) / 2 for cosine, the identity for sigmoid. Monotonic, so the order
  never changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from lastrank.errors import InvalidRequestError
from lastrank.types import RankedDocument, RerankRequest, RerankResult, Usage

ScoreKind = Literal["cosine", "sigmoid"]


@dataclass(frozen=True)
class Capabilities:
    """What a served model is and can do; shown in /v1/models and used by the API to validate requests."""

    family: str  # registry name, e.g. "jina-v3", "bi-encoder"
    architecture: str  # what the checkpoint is, e.g. "JinaForRanking", "BertModel (mean pooling)"
    listwise: bool  # True: documents see each other in one context (jina-v3); False: each pair alone
    score: ScoreKind
    raw_score: str  # what raw_score holds, in words ("cosine", "logit", "logit(yes) - logit(no)")
    instruction: bool  # the `instruction` field changes the prompt
    embedding_dim: int | None  # size of return_embeddings vectors; None: embeddings not available
    context_length: int  # tokens one model input may hold
    max_doc_length: int  # default per-document token limit (the official default)
    max_query_length: int  # default query token limit (the official default)
    images: bool = False  # the query and documents may be images (RerankRequest.images)

    def unit_score(self, relevance: float) -> float:
        """relevance_score mapped to [0, 1] (see the module docstring)."""
        return (1.0 + relevance) / 2.0 if self.score == "cosine" else relevance

    def as_dict(self) -> dict:
        return {
            "family": self.family, "architecture": self.architecture, "listwise": self.listwise,
            "score": self.score, "raw_score": self.raw_score, "instruction": self.instruction,
            "embedding_dim": self.embedding_dim, "context_length": self.context_length,
            "max_doc_length": self.max_doc_length, "max_query_length": self.max_query_length,
            "images": self.images,
        }


class Limits(NamedTuple):
    """A request's effective token limits: what its documents and query are truncated to and what its usage
    reports (max_doc_length, max_query_length). `Backend.limits(request)` is their one owner; `plan` and
    `chunk_window` are handed them. What a limit counts is the family's (module docstrings): a document's own
    tokens (jina-v3, bi-encoders) or the whole pair (cross-encoders, causal LMs)."""

    max_doc: int
    max_query: int


@dataclass
class Block:
    """The unit of model work the scheduler queues and batches. Families subclass it with their inputs;
    the scheduler reads only request_id, index and n_tokens."""

    request_id: str
    index: int  # block number within its request
    doc_indices: list[int]  # positions in request.documents whose scores this block produces

    @property
    def n_tokens(self) -> int:  # what the scheduler budgets; families override
        raise NotImplementedError


@dataclass
class RerankPlan:
    request: RerankRequest
    blocks: list[Block]
    usage: Usage = field(default_factory=Usage)


@dataclass
class EncodedRequest:
    """What a family's `encode_request` makes of a request (with at least one document) under its limits; `plan`
    refuses and bills from it."""

    blocks: list[Block]
    doc_tokens: list[int]  # per document: its own tokens after truncation, as Usage.doc_tokens reports them
    truncated: list[int]  # indices of the documents that were cut
    query_truncated: bool = False


@dataclass
class Scores:
    """One entry per input document, in input order."""

    relevance: np.ndarray  # float [n]
    raw: np.ndarray  # float [n]
    embeddings: np.ndarray | None = None  # float32 [n, dim] when the request asked and the family has them
    spans: list[tuple[int, int]] | None = None  # chunk mode: the best chunk's [start, end) per document


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The one sigmoid of the "sigmoid" score rule, in float64; exp of -|x| only, so no overflow for any logit."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def rank(request: RerankRequest, scores: Scores, usage: Usage) -> RerankResult:
    """The one owner of ordering, score_threshold and top_n, for every family.

    Order: `np.argsort(relevance)[::-1]`, exactly what the official Jina V3 rerank() does (its ties and
    all); the same rule for every family so the API never re-sorts. Then documents with
    relevance < score_threshold are dropped (kept: >= threshold, so NaN is dropped), then top_n is kept.
    """
    options = request.options
    order = np.argsort(scores.relevance)[::-1]
    if options.score_threshold is not None:
        order = [i for i in order if scores.relevance[i] >= options.score_threshold]
    if options.top_n is not None:
        order = order[: options.top_n]
    results = [
        RankedDocument(
            index=int(i),
            relevance_score=float(scores.relevance[i]),
            document=request.documents[i],
            embedding=scores.embeddings[i].tolist() if options.return_embeddings and scores.embeddings is not None
            else None,
            raw_score=float(scores.raw[i]),
            span=scores.spans[i] if options.return_spans and scores.spans is not None else None,
        )
        for i in order
    ]
    return RerankResult(results, usage, request.request_id)


class Backend(ABC):
    """One loaded model of one family. Thread-safety: `plan` and `finish` may run in any thread, concurrently;
    `run_blocks` and `warmup` are called from one thread at a time (the scheduler's worker owns the model)."""

    capabilities: Capabilities
    # Where and in what the model runs (Reranker reports them): every family sets `device` (a torch.device) at
    # load and has a `dtype` property (a torch.dtype, read from its weights). Annotations only, so a wrapper
    # (ChunkingBackend) forwards them and a test fake without a model need not invent them.
    device: Any
    dtype: Any
    model_id: str = ""  # what the user asked for (hub id or folder)
    path: Path | None = None  # the resolved checkpoint folder
    random_weights: bool = False  # a `lastrank make-checkpoint` folder: scores mean nothing

    def __init__(self, *, model_id: str = "", path: Path | None = None, random_weights: bool = False):
        """What every family's loader passes on (families.load_backend)."""
        self.model_id = model_id
        self.path = path
        self.random_weights = random_weights

    def plan(self, request: RerankRequest) -> RerankPlan:
        """The one plan skeleton: the request's limits, an empty plan for no documents, the family's
        `encode_request`, then the truncate=False refusal (`truncation_refused`) and the usage, for every family."""
        limits = self.limits(request)
        usage = Usage(documents=len(request.documents), max_doc_length=limits.max_doc,
                      max_query_length=limits.max_query)
        if not request.documents:
            return RerankPlan(request, [], usage)
        enc = self.encode_request(request, limits)
        if not request.options.truncate and (enc.truncated or enc.query_truncated):
            raise InvalidRequestError(truncation_refused(enc.truncated, enc.query_truncated, *limits))
        usage.prompt_tokens = sum(b.n_tokens for b in enc.blocks)
        usage.blocks = len(enc.blocks)
        usage.truncated_indices = enc.truncated
        usage.query_truncated = enc.query_truncated
        usage.doc_tokens = enc.doc_tokens
        return RerankPlan(request, enc.blocks, usage)

    def encode_request(self, request: RerankRequest, limits: Limits) -> EncodedRequest:
        """The family's part of `plan`: the official template and truncation under `limits`, cut into blocks.
        Every family implements it (a wrapper that overrides `plan` need not)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither encode_request nor plan")

    @abstractmethod
    def run_blocks(self, blocks: list[Block]) -> list[Any]: ...

    @abstractmethod
    def scores(self, plan: RerankPlan, outputs: list[Any]) -> Scores: ...

    def token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, the character span of each of its tokens (module docstring, "Long documents")."""
        raise NotImplementedError(f"{type(self).__name__} does not expose token offsets")

    def limits(self, request: RerankRequest) -> Limits:
        """The request's effective limits (`Limits`): the request's, else the family's official defaults. A
        family whose official limits are derived differently (capped at the position table, a query share of
        the pair, a sum that must fit) overrides this; nothing else computes them."""
        caps, options = self.capabilities, request.options
        return Limits(options.max_doc_length or caps.max_doc_length, options.max_query_length or caps.max_query_length)

    def chunk_window(self, request: RerankRequest, limits: Limits) -> int:
        """Own tokens a document keeps before truncation under `limits` (module docstring, "Long documents")."""
        return limits.max_doc

    def finish(self, plan: RerankPlan, outputs: list[Any]) -> RerankResult:
        if not plan.blocks:
            return RerankResult([], plan.usage, plan.request.request_id)
        return rank(plan.request, self.scores(plan, outputs), plan.usage)

    def rerank(self, request: RerankRequest) -> RerankResult:
        plan = self.plan(request)
        return self.finish(plan, self.run_blocks(plan.blocks))

    def warmup(self) -> None:
        """One small request through every code path (an image document too, for a model that reads images), so
        the first client does not pay for lazy set-up."""
        images = None
        if self.capabilities.images:
            import PIL.Image  # only image models pay for it

            images = {1: PIL.Image.new("RGB", (56, 56), (128, 128, 128))}
        self.rerank(RerankRequest(query="warm up", documents=["a short passage", "another passage"], images=images))


def refused_image(images: dict | None, capabilities: Capabilities) -> str | int | None:
    """The one rule for images sent to a text-only model: the first image input it refuses ("query", else the
    lowest document index), or None. Never images silently ignored: the API answers a 422 naming that input
    (handler.image_refusal) before any work, the engine a 400 (check_images)."""
    if not images or capabilities.images:
        return None
    return "query" if "query" in images else min(images)


def check_images(request: RerankRequest, capabilities: Capabilities) -> None:
    """A request with images to a text-only model is a clear 400 (refused_image)."""
    if refused_image(request.images, capabilities) is not None:
        raise InvalidRequestError(f"this model ({capabilities.family}) ranks text only; the request has images")


def name_indices(indices: list[int], most: int = 10) -> str:
    """"3, 17" or "0, 1, ..., 9 and 5 more": document indices as messages name them (at most `most`)."""
    shown = ", ".join(str(i) for i in indices[:most])
    return shown + (f" and {len(indices) - most} more" if len(indices) > most else "")


def truncation_refused(cut: list[int], query_cut: bool, max_doc: int, max_query: int) -> str:
    """The message of a request with truncate=False that would need truncation (every family's plan uses it)."""
    parts = []
    if cut:
        parts.append(f"{len(cut)} document(s) (indices {name_indices(cut)}) exceed {max_doc} tokens")
    if query_cut:
        parts.append(f"the query exceeds {max_query} tokens")
    return "; ".join(parts) + "; send truncate=true (or shorter inputs) to have them truncated"
