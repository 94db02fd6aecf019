"""The store's contract tests run against both backends: every test taking `store` or `target` runs once on
a SQLite file and once on a fresh database of a real PostgreSQL server (tests/support/postgres_server.py)."""

from __future__ import annotations

import pytest

from support import postgres_server
from lastrank.store import open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def target(backend, tmp_path):
    """What open_store takes: a fresh SQLite path, or the URL of a fresh, empty PostgreSQL database."""
    if backend == "sqlite":
        yield str(tmp_path / "lastrank.db")
        return
    with postgres_server.database() as url:
        yield url


@pytest.fixture
def store(target):
    s = open_store(target)
    yield s
    s.close()


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database, for tests of that backend's own mechanics."""
    with postgres_server.database() as url:
        yield url
