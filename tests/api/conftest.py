"""Fixtures of the API tests: the fake scheduler (tests/support/fake_scheduler.py: a deterministic toy scorer,
no model), a real Store in tmp, and TestClients on an app with both."""

from __future__ import annotations

import pytest
from support.fake_scheduler import FakeScheduler


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
        settings = ServerSettings(model=("/ckpt/tiny",), **overrides)
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
