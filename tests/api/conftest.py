"""Fakes for the API tests: a scheduler with a deterministic toy scorer (no model), a real Store in tmp."""

from __future__ import annotations

import asyncio

import pytest

from lastrank.errors import OverloadedError
from lastrank.types import RankedDocument, RerankResult, Usage


def toy_score(query: str, doc: str) -> float:
    """Word overlap, in [0, 1]; ties broken by index in the fake (stable sort)."""
    q = set(query.lower().split())
    d = set(doc.lower().split())
    return len(q & d) / (len(q) or 1)


class FakeScheduler:
    """Implements Scheduler.submit with toy scores; can block, fail with overload, and count calls."""

    score = staticmethod(toy_score)

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
        if request.top_n is not None:
            order = order[: request.top_n]
        results = [RankedDocument(i, scores[i], request.documents[i],
                                  [0.5, 0.5] if request.return_embeddings else None) for i in order]
        doc_tokens = [min(len(d.split()) + 1, request.max_doc_length) for d in request.documents]
        usage = Usage(documents=len(request.documents), prompt_tokens=10 + sum(doc_tokens),
                      blocks=1 if request.documents else 0,
                      truncated_indices=[i for i, d in enumerate(request.documents)
                                         if len(d.split()) + 1 > request.max_doc_length],
                      doc_tokens=doc_tokens)
        return RerankResult(results, usage, request.request_id)


@pytest.fixture
def store(tmp_path):
    from lastrank.store import Store

    s = Store(tmp_path / "lastrank.db")
    yield s
    s.close()


@pytest.fixture
def fake_scheduler():
    return FakeScheduler()


@pytest.fixture
def make_client(store, fake_scheduler):
    """make_client(**settings) -> a started TestClient on an app with the fake scheduler and a real store."""
    from fastapi.testclient import TestClient

    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    clients = []

    def make(**overrides):
        settings = ServerSettings(model_id="/ckpt/tiny", **overrides)
        app = create_app(settings, store, scheduler=fake_scheduler)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()
