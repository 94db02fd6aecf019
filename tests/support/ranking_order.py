"""The order check shared by the parity tests: lastrank's ranking against a reference's scores.

Documents whose reference scores are tied, or apart by less than the test's tolerance, may come in either
order: which of them wins is decided by the last bits of the arithmetic (float noise of ~1e-8), and those
change with the thread count and the kernels picked, in lastrank as in the reference. Comparing the order of
such documents makes a test fail at random (Qwen3-Reranker's `query_over_its_cap` case has five exactly
tied reference scores and failed every time with 2 threads). Every pair the reference separates by more
than the tolerance must still come in the reference's order, so a real swap still fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def order_violations(got: Sequence[int], reference: Sequence[float], atol: float) -> list[tuple[int, int]]:
    """(above, below) document indices where `got` (best first) ranks `above` over `below` although the
    reference scores `below` higher by more than atol."""
    ref = np.asarray(reference, dtype=np.float64)
    return [(a, b) for p, a in enumerate(got) for b in got[p + 1:] if ref[b] - ref[a] > atol]


def assert_order_agrees(got: Sequence[int], reference: Sequence[float], atol: float) -> None:
    """`got` ranks every document of `reference` (indexed by document) once, and never puts a document above
    one the reference scores higher by more than atol."""
    got = [int(i) for i in got]
    assert sorted(got) == list(range(len(reference))), f"not a ranking of all {len(reference)} documents: {got}"
    bad = order_violations(got, reference, atol)
    assert not bad, "order differs from the reference's: " + "; ".join(
        f"{a} ranked above {b}, reference {reference[a]:.8f} < {reference[b]:.8f}" for a, b in bad[:3])
