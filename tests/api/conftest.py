"""Fixtures of the API tests: the fake scheduler (tests/support/fake_scheduler.py: a deterministic toy scorer,
no model), a real Store in tmp, and TestClients on an app with both."""

from __future__ import annotations

import contextlib

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
def start_client():
    """start_client(app) -> a started TestClient of the app (its lifespan run; a server error is a 500, not
    raised), stopped after the test. A fixture that uses it and a store stops its clients before the store closes
    when it names the store first."""
    from fastapi.testclient import TestClient

    with contextlib.ExitStack() as clients:
        yield lambda app: clients.enter_context(TestClient(app, raise_server_exceptions=False))


@pytest.fixture
def make_client(store, fake_scheduler, start_client):
    """make_client(**settings) -> a started TestClient on an app with the fake scheduler and a real store."""
    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings

    return lambda **overrides: start_client(create_app(ServerSettings(model=("/ckpt/tiny",), **overrides), store,
                                                       scheduler=fake_scheduler))


@pytest.fixture
def client(make_client):
    return make_client()
