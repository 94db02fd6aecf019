"""The parity tests' order check (tests/support/ranking_order.py) ignores the order of tied scores and still
catches a real swap."""

from __future__ import annotations

import pytest

from support.ranking_order import assert_order_agrees, order_violations


def test_tied_scores_may_come_in_either_order():
    tied = [0.04544959, 0.04544959 + 4.5e-8, 0.04544959, 0.9, 0.04544959 - 3e-8]  # query_over_its_cap's shape
    assert_order_agrees([3, 0, 1, 2, 4], tied, 1e-5)
    assert_order_agrees([3, 4, 2, 1, 0], tied, 1e-5)


def test_a_swap_of_scores_that_differ_fails():
    scores = [0.2, 0.5, 0.5 + 2e-5, 0.1]
    assert order_violations([2, 1, 0, 3], scores, 1e-5) == []
    assert order_violations([1, 2, 0, 3], scores, 1e-5) == [(1, 2)]  # 2e-5 apart: more than the tolerance
    with pytest.raises(AssertionError, match="3 ranked above 0"):
        assert_order_agrees([2, 1, 3, 0], scores, 1e-5)


def test_every_document_must_be_ranked_once():
    with pytest.raises(AssertionError, match="not a ranking"):
        assert_order_agrees([1, 1, 0], [0.1, 0.2, 0.3], 1e-5)
    with pytest.raises(AssertionError, match="not a ranking"):
        assert_order_agrees([2, 1], [0.1, 0.2, 0.3], 1e-5)
