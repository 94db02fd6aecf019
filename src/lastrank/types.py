"""The one internal request/response vocabulary shared by the engine, the server, the CLI and eval."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RerankRequest:
    """What every dialect is translated into; the engine never sees a dialect."""

    query: str
    documents: list[str]
    top_n: int | None = None
    return_embeddings: bool = False
    max_doc_length: int = 2048
    max_query_length: int = 512
    instruction: str | None = None
    request_id: str = field(default_factory=new_request_id)
    # absolute time.monotonic() after which pending blocks are dropped; None = no deadline
    deadline: float | None = None


@dataclass
class RankedDocument:
    index: int
    relevance_score: float
    document: str  # the original input text, untruncated
    embedding: list[float] | None = None

    def as_dict(self) -> dict:
        return {
            "index": self.index,
            "relevance_score": self.relevance_score,
            "document": self.document,
            "embedding": self.embedding,
        }


@dataclass
class Usage:
    documents: int = 0
    prompt_tokens: int = 0  # tokens of every block prompt actually run through the model
    blocks: int = 0
    truncated_documents: int = 0
    query_truncated: bool = False
    doc_tokens: list[int] = field(default_factory=list)  # per-document token count after truncation


@dataclass
class RerankResult:
    results: list[RankedDocument]
    usage: Usage
    request_id: str = ""
