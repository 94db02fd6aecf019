"""Eval fixtures: the bundled real data sets and fake rerankers that record what they were fed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lastrank.eval.data import BUNDLED_ROOT


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data sets shipped in the package (src/lastrank/eval/datasets): always there, never skipped."""
    return BUNDLED_ROOT


class RecordingReranker:
    """Scores each document with `score(query, doc)` and records every call's (query, documents).

    `fail_after`: raise after that many successful calls (simulates an interrupted run)."""

    def __init__(self, score=None, fail_after: int | None = None):
        self.score = score or (lambda q, d: -len(d))
        self.fail_after = fail_after
        self.calls: list[tuple[str, list[str]]] = []

    def rerank(self, query, documents, top_n=None, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append((query, list(documents)))
        scores = [float(self.score(query, d)) for d in documents]
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        return [{"index": i, "relevance_score": scores[i], "document": documents[i], "embedding": None} for i in order]


class PositionReranker(RecordingReranker):
    """Ranks purely by input position (first in the prompt = best): maximally order-sensitive."""

    def rerank(self, query, documents, top_n=None, **kwargs):
        self.calls.append((query, list(documents)))
        n = len(documents)
        return [{"index": i, "relevance_score": float(n - i), "document": documents[i], "embedding": None} for i in range(n)]


@pytest.fixture
def fakes():
    """The fake reranker classes (fixtures, since test modules cannot import a conftest by name)."""
    return SimpleNamespace(Recording=RecordingReranker, Position=PositionReranker)

