"""engine/pairs.py: cutting pairs into blocks / forwards under one or several budgets."""

from __future__ import annotations

from lastrank.engine.pairs import cut_blocks


def test_cut_blocks_one_budget():
    assert cut_blocks([3, 4, 2, 9, 1], 7) == [[0, 1], [2], [3], [4]]
    assert cut_blocks([], 7) == []


def test_cut_blocks_several_budgets_each_against_its_own_limit():
    # (tokens, patches): the second item fits the tokens but not the patches, so it starts a group
    sizes = [(10, 0), (10, 50), (10, 40), (30, 0), (5, 200)]
    assert cut_blocks(sizes, (40, 60)) == [[0, 1], [2, 3], [4]]  # a larger item alone
