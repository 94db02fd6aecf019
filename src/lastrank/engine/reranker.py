"""Reranker: the public Python API, the same algorithm the server runs."""

from __future__ import annotations

from pathlib import Path

from lastrank.engine.rerank import RerankEngine
from lastrank.model.loading import load_model, parse_dtype, resolve_checkpoint, resolve_device
from lastrank.model.tokenizer import RerankTokenizer
from lastrank.types import RerankRequest, RerankResult

DEFAULT_MODEL = "jinaai/jina-reranker-v3"


class Reranker:
    """Load a Jina Reranker V3 checkpoint (hub id or local folder) and rank documents like the official
    `rerank()`: same prompt, truncation, 125-document blocks and weighted query merge."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str | None = "cpu", dtype: str = "bfloat16",
                 revision: str | None = None, cache_dir: str | None = None, *, pack_blocks: bool | None = None,
                 compile: bool | None = None):
        """pack_blocks: share one forward between the blocks of a batch (None: on CUDA only, where it pays;
        docs/benchmarks.md measured 0.93x on CPU). compile: opt-in torch.compile of the layers (None: the
        LASTRANK_COMPILE environment variable; the first compile takes tens of seconds)."""
        self.model_id = str(model)
        self.path = resolve_checkpoint(model, revision=revision, cache_dir=cache_dir)
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype)
        self.tokenizer = RerankTokenizer.from_dir(self.path)
        self.engine = RerankEngine(load_model(self.path, self.device, self.dtype, compile=compile), self.tokenizer,
                                   self.device, pack_blocks=pack_blocks)

    def rerank(self, query: str, documents: list[str], top_n: int | None = None, return_embeddings: bool = False,
               max_doc_length: int = 2048, max_query_length: int = 512, instruction: str | None = None) -> list[dict]:
        """Documents best first: [{"index", "relevance_score", "document", "embedding"}]."""
        request = RerankRequest(query=query, documents=documents, top_n=top_n, return_embeddings=return_embeddings,
                                max_doc_length=max_doc_length, max_query_length=max_query_length,
                                instruction=instruction)
        return [r.as_dict() for r in self.engine.rerank(request).results]

    def rerank_request(self, request: RerankRequest) -> RerankResult:
        return self.engine.rerank(request)

    def __repr__(self) -> str:
        return f"Reranker({self.model_id!r}, device={str(self.device)!r}, dtype={str(self.dtype).removeprefix('torch.')!r})"
