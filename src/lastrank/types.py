"""The one internal request/response vocabulary shared by the engine, the server, the CLI and eval."""

from __future__ import annotations

import math
import numbers
import uuid
from dataclasses import dataclass, field, fields

from lastrank.errors import InvalidRequestError
from lastrank.images import decoded_image


def new_request_id() -> str:
    return uuid.uuid4().hex


def _check_int(name: str, value, minimum: int) -> int:
    # numbers.Integral so numpy integers work too; bool is an int subclass but never a count
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidRequestError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_unicode(name: str, text: str) -> None:
    """A str that UTF-8 cannot encode holds an unpaired surrogate (e.g. "caf\\udce9": a file decoded with
    surrogateescape, or a JSON \\ud800 escape). No tokenizer takes one, so it is refused here, naming the
    input, before any model work (api/handler.py calls it first, with the field named as the wire names it)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequestError(f"{name} is not valid Unicode: it holds an unpaired surrogate "
                                  f"(U+{ord(text[e.start]):04X} at character {e.start})") from None


CHUNKING_MODES = ("truncate", "chunk")
# the metadata of a RerankOptions field that only chunk mode reads (the CLI refuses its flag without it)
CHUNK_MODE = {"chunk_mode": True}


def _set(options, name: str, value) -> None:
    object.__setattr__(options, name, value)  # a frozen dataclass normalising its own fields in __post_init__


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false, got {type(value).__name__}")


# RerankOptions' counts (None: the default) and the least value each takes
_COUNTS = {"top_n": 0, "max_doc_length": 1, "max_query_length": 1, "chunk_overlap": 0, "max_chunks_per_doc": 1}


@dataclass(frozen=True)
class RerankOptions:
    """How to rank (everything about a request but its inputs and identity). Frozen, and validated once, here,
    when built: every edge (the API dialects, Reranker.rerank / Client.rerank's **options, the CLI, the router)
    builds one from its own names, and copies are dataclasses.replace (validated again, cheaply). Numbers are
    normalised to int / float (numpy numbers accepted). The wire schemas check shapes first, to answer with the
    wire's field names (a 422 with a location); these checks are the invariants, for every edge.
    A new option is added here, to the wire schema (api/dialects, by the same name) and to its consumer.
    """

    top_n: int | None = None  # results kept after ranking; None: all (more than the documents: all)
    return_embeddings: bool = False
    # None: the family's official default (Capabilities); the server's limits on characters and documents per
    # request are the API's, not this type's
    max_doc_length: int | None = None
    max_query_length: int | None = None
    instruction: str | None = None
    # drop results scoring below this (after ranking, before top_n); None: keep all
    score_threshold: float | None = None
    # False: an input that would be truncated is an InvalidRequestError at plan time (TEI truncate=false)
    truncate: bool = True
    # Long documents (engine/chunking.py): "truncate" cuts a document at its token limit (the official
    # behaviour); "chunk" splits it into windows of that many tokens, ranks every window, and scores the
    # document by its best window. chunk_overlap: tokens shared by consecutive windows (None: window // 8);
    # max_chunks_per_doc: windows kept per document (None: no per-document cap; the rest of a longer
    # document is dropped and reported as truncated); return_spans: each result carries its best window's
    # character offsets [start, end) in the original document (chunk mode only; None otherwise).
    chunking: str = "truncate"
    chunk_overlap: int | None = field(default=None, metadata=CHUNK_MODE)
    max_chunks_per_doc: int | None = field(default=None, metadata=CHUNK_MODE)
    return_spans: bool = field(default=False, metadata=CHUNK_MODE)

    def __post_init__(self):
        for name, minimum in _COUNTS.items():
            if getattr(self, name) is not None:
                _set(self, name, _check_int(name, getattr(self, name), minimum))
        for name in ("return_embeddings", "truncate", "return_spans"):
            _check_bool(name, getattr(self, name))
        if self.instruction is not None:
            if not isinstance(self.instruction, str):
                raise InvalidRequestError(
                    f"instruction must be a string or None, got {type(self.instruction).__name__}")
            check_unicode("instruction", self.instruction)
        if self.score_threshold is not None:
            if isinstance(self.score_threshold, bool) or not isinstance(self.score_threshold, numbers.Real) \
                    or not math.isfinite(self.score_threshold):
                raise InvalidRequestError(f"score_threshold must be a finite number, got {self.score_threshold!r}")
            _set(self, "score_threshold", float(self.score_threshold))
        if self.chunking not in CHUNKING_MODES:
            raise InvalidRequestError(f"chunking must be one of {', '.join(map(repr, CHUNKING_MODES))}, got {self.chunking!r}")


@dataclass
class RerankRequest:
    """What every dialect (and the Python API) is translated into; backends never see a dialect: the inputs,
    the request's identity, and its RerankOptions.

    Validated once, here, when it is built: a RerankRequest that exists is well-formed (types, counts),
    whichever edge built it. Building one never reads a file or decodes an image: the edges do (Reranker.rerank
    through images.split_images, the API in handler.to_request).
    """

    query: str
    documents: list[str]
    options: RerankOptions = field(default_factory=RerankOptions)
    request_id: str = field(default_factory=new_request_id)
    # absolute time.monotonic() after which pending blocks are dropped; None = no deadline
    deadline: float | None = None
    # Images (multimodal families only: Capabilities.images; any other family refuses a request that has
    # them, engine/backend.check_images). Keys: "query" and/or document indices; that input is then the image,
    # and its text in `query` / `documents` is only a label (returned as the result's `document`; may be "").
    # Values: decoded PIL images (images.image_input makes them from bytes or a path, at the edges).
    # None or {}: a text-only request.
    images: dict | None = None

    def __post_init__(self):
        if not isinstance(self.query, str):
            raise InvalidRequestError(f"query must be a string, got {type(self.query).__name__}")
        check_unicode("query", self.query)
        if not isinstance(self.documents, (list, tuple)):
            raise InvalidRequestError(
                f"documents must be a list of strings, got {type(self.documents).__name__}")
        for i, doc in enumerate(self.documents):
            if not isinstance(doc, str):
                raise InvalidRequestError(f"documents[{i}] must be a string, got {type(doc).__name__}")
            check_unicode(f"documents[{i}]", doc)
        if not isinstance(self.options, RerankOptions):
            raise InvalidRequestError(f"options must be a RerankOptions, got {type(self.options).__name__}")
        if self.images is not None:
            self.images = _check_images(self.images, len(self.documents)) or None


def _check_images(images, n_documents: int) -> dict:
    if not isinstance(images, dict):
        raise InvalidRequestError(f"images must be a mapping of 'query' / document index to image, got "
                                  f"{type(images).__name__}")
    out = {}
    for key, value in images.items():
        if key != "query":
            if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < n_documents:
                raise InvalidRequestError(f"images keys must be 'query' or a document index in [0, {n_documents}), "
                                          f"got {key!r}")
            key = int(key)
        out[key] = decoded_image(value, "query" if key == "query" else f"documents[{key}]")
    return out


@dataclass
class RankedDocument:
    index: int
    relevance_score: float
    document: str  # the original input text, untruncated
    embedding: list[float] | None = None
    raw_score: float | None = None  # the family's raw score (a cosine, or a logit before the sigmoid)
    # with return_spans in chunk mode: the best chunk's character offsets [start, end) in `document`
    span: tuple[int, int] | None = None

    def as_dict(self) -> dict:
        out = {
            "index": self.index,
            "relevance_score": self.relevance_score,
            "document": self.document,
            "embedding": self.embedding,
        }
        if self.span is not None:
            out["span"] = list(self.span)
        return out


@dataclass
class TruncationReport:
    """A provider's own truncation report (router/providers.py): documents cut, whether the query was, and its
    warnings as it wrote them (its indices are the client's: the router sends the documents in their order)."""

    documents: int = 0
    query: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class Usage:
    documents: int = 0
    prompt_tokens: int = 0  # tokens of every model input actually run (what is billed as tokens)
    blocks: int = 0
    truncated_indices: list[int] = field(default_factory=list)  # documents cut to max_doc_length, settled at plan time
    query_truncated: bool = False
    doc_tokens: list[int] = field(default_factory=list)  # per-document token count after truncation
    max_doc_length: int = 0  # the per-document limit the plan applied
    max_query_length: int = 0
    # chunk mode: the passages actually ranked (each chunk counts once; a document under the limit is one
    # chunk); 0 when the request was not chunked. `documents` stays the count the client sent.
    chunks: int = 0

    @property
    def truncated_documents(self) -> int:
        return len(self.truncated_indices)

    @property
    def ranked_passages(self) -> int:
        """What search units count: every chunk in chunk mode (as Cohere counts them), else the documents."""
        return self.chunks or self.documents


@dataclass
class RerankResult:
    results: list[RankedDocument]
    usage: Usage
    request_id: str = ""
    provider: str | None = None  # routed models (lastrank/router): the provider that answered, for the ledger
    # routed models: what the provider that answered said it truncated (a lastrank upstream says it), passed on
    # to the client in place of the plan's report from `usage`; None: the usual report from `usage`
    truncation: TruncationReport | None = None
