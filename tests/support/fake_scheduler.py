"""The API tests' fake scheduler: a ModelRunner with a deterministic toy scorer (word overlap, no model) that
can block at a gate, refuse with an overload, and records what it was sent. Used by tests/api/conftest.py's
fixtures and by test modules that build their own app."""

from __future__ import annotations

import asyncio

from lastrank.engine.backend import Capabilities
from lastrank.engine.runner import ModelRunner
from lastrank.errors import OverloadedError
from lastrank.types import RankedDocument, RerankResult, Usage

# The fake model declares itself a Jina V3 (cosine scores, answers to "jina-reranker-v3").
FAKE_CAPABILITIES = Capabilities(family="jina-v3", architecture="fake", listwise=True, score="cosine",
                                 raw_score="cosine", instruction=True, embedding_dim=2, context_length=131072,
                                 max_doc_length=2048, max_query_length=512)


def toy_score(query: str, doc: str) -> float:
    """Word overlap, in [0, 1]; ties broken by index in the fake (stable sort)."""
    q = set(query.lower().split())
    d = set(doc.lower().split())
    return len(q & d) / (len(q) or 1)


class FakeScheduler(ModelRunner):
    """Implements Scheduler.submit with toy scores; can block, fail with overload, and count calls."""

    score = staticmethod(toy_score)
    capabilities = FAKE_CAPABILITIES
    busy = False
    tokens_per_second = None
    refused_draining = 0

    def __init__(self):
        self.requests = []
        self.cancelled = []
        self.overloaded = False
        self.gate: asyncio.Event | None = None
        self.running = False
        self.queued_requests = 0
        self.queued_tokens = 0

    async def start(self):
        self.running = True

    async def stop(self):
        self.running = False

    def admission_error(self):
        return None  # `overloaded` refuses in submit, after the request was read (Saturable refuses ahead)

    def drain(self, deadline=None):
        return 0  # no queue: a request waiting at `gate` is a running one, which a drain lets finish

    async def submit(self, request):
        if self.overloaded:
            raise OverloadedError("too many requests queued", retry_after=3.0)
        self.requests.append(request)
        self.queued_requests += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        finally:
            self.queued_requests -= 1
        scores = [toy_score(request.query, d) for d in request.documents]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        if request.options.score_threshold is not None:
            order = [i for i in order if scores[i] >= request.options.score_threshold]
        if request.options.top_n is not None:
            order = order[: request.options.top_n]
        results = [RankedDocument(i, scores[i], request.documents[i],
                                  [0.5, 0.5] if request.options.return_embeddings else None, raw_score=scores[i])
                   for i in order]
        max_doc = request.options.max_doc_length or FAKE_CAPABILITIES.max_doc_length
        doc_tokens = [min(len(d.split()) + 1, max_doc) for d in request.documents]
        cut = [i for i, d in enumerate(request.documents) if len(d.split()) + 1 > max_doc]
        if cut and not request.options.truncate:
            from lastrank.engine.backend import truncation_refused
            from lastrank.errors import InvalidRequestError

            raise InvalidRequestError(truncation_refused(cut, False, max_doc, 512))
        usage = Usage(documents=len(request.documents), prompt_tokens=10 + sum(doc_tokens),
                      blocks=1 if request.documents else 0, truncated_indices=cut, doc_tokens=doc_tokens,
                      max_doc_length=max_doc, max_query_length=request.options.max_query_length or 512)
        return RerankResult(results, usage, request.request_id)
