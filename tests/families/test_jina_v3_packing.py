"""Packed variable-length blocks: several block prompts in one forward give each block exactly what it gets
alone (float32, 1e-5), with positions restarting at 0 per block and attention kept inside each block.

The same code path serves CUDA (where packing is on by default); here it runs on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lastrank.families.jina_v3 import JinaV3Backend as RerankEngine
from lastrank.model.jina import DOC_MARKER_ID, QUERY_MARKER_ID
from lastrank.model.jina import load_jina_v3
from lastrank.model.attention import Packing
from lastrank.model.tokenizer import JinaV3Tokenizer
from lastrank.types import RerankRequest

ATOL = 1e-5


def prompt(n: int, n_docs: int, seed: int, tail: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 150000, (n,), generator=g)
    pos = torch.randperm(n - tail - 2, generator=g)[:n_docs] + 1
    ids[pos] = DOC_MARKER_ID
    ids[n - tail - 1] = QUERY_MARKER_ID
    return ids


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.float32)


def test_positions_restart_per_block_and_mask_is_block_diagonal_causal():
    p = Packing([3, 2, 4], torch.device("cpu"), attention="mask")
    assert p.positions.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert p.starts == [0, 3, 5]
    m = p.mask(None)
    want = torch.zeros(9, 9, dtype=torch.bool)
    for s, n in ((0, 3), (3, 2), (5, 4)):
        want[s:s + n, s:s + n] = torch.ones(n, n, dtype=torch.bool).tril()
    assert torch.equal(m, want)
    assert torch.equal(p.mask(torch.tensor([2, 4, 8])), want[[2, 4, 8]])
    with pytest.raises(ValueError):
        Packing([3], torch.device("cpu"), attention="flash")


@pytest.mark.parametrize("attention", ["segments", "mask"])
def test_packed_backbone_equals_each_sequence_alone(model, attention):
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 150000, (n,), generator=g) for n in (57, 200, 1, 131)]  # a 1-token sequence too
    packed = torch.cat(seqs)
    lens = [len(s) for s in seqs]
    with torch.inference_mode():
        out = model.model(packed, lens, attention=attention)
        start = 0
        for s in seqs:
            alone = model.model(s)
            torch.testing.assert_close(out[start:start + len(s)], alone, atol=ATOL, rtol=0)
            start += len(s)
        # rows only, across sequences
        rows = torch.tensor([0, 56, 57, 100, 257, 258, 300])
        torch.testing.assert_close(model.model(packed, lens, rows, attention), out[rows], atol=ATOL, rtol=0)


def test_packing_is_not_plain_concatenation(model):
    """If positions did not restart or attention crossed blocks, the second block would differ: prove the
    test above can fail by showing a plain one-sequence forward of the concatenation does differ."""
    a, b = prompt(40, 2, 1), prompt(30, 2, 2)
    with torch.inference_mode():
        packed = model.model(torch.cat([a, b]), [40, 30])[40:]
        concatenated = model.model(torch.cat([a, b]))[40:]
        alone = model.model(b)
    torch.testing.assert_close(packed, alone, atol=ATOL, rtol=0)
    assert (concatenated - alone).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["segments", "mask"])
def test_embed_blocks_packed_equals_one_by_one(model, attention):
    blocks = [prompt(n, k, 10 + i) for i, (n, k) in enumerate(((120, 4), (33, 1), (260, 9)))]
    packed = model.embed_blocks(blocks, DOC_MARKER_ID, QUERY_MARKER_ID, attention=attention)
    assert len(packed) == 3
    for ids, (q, d, s) in zip(blocks, packed):
        q0, d0, s0 = model.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0]
        assert d.shape == d0.shape
        for x, y in ((q, q0), (d, d0), (s, s0)):
            torch.testing.assert_close(x, y, atol=ATOL, rtol=0)


def _engine(checkpoint, **kw):
    m = load_jina_v3(checkpoint, torch.device("cpu"), torch.float32)
    return RerankEngine(m, JinaV3Tokenizer.from_dir(checkpoint), torch.device("cpu"), **kw)


@pytest.mark.parametrize("attention", ["segments", "mask"])
def test_run_blocks_packed_across_requests_equals_unpacked(tiny_checkpoint, attention):
    packed = _engine(tiny_checkpoint, pack_blocks=True, packed_attention=attention)
    single = _engine(tiny_checkpoint, pack_blocks=False)
    docs_a = [f"passage {i} about green tea and health" * (1 + i % 3) for i in range(130)]  # 2 blocks
    docs_b = ["coffee", "tea leaves", "a train"]
    plan_a = packed.plan(RerankRequest(query="green tea", documents=docs_a, request_id="a"))
    plan_b = packed.plan(RerankRequest(query="caffeine", documents=docs_b, request_id="b"))
    assert len(plan_a.blocks) == 2
    blocks = [plan_a.blocks[0], plan_b.blocks[0], plan_a.blocks[1]]  # interleaved requests, as the scheduler does
    got, want = packed.run_blocks(blocks), single.run_blocks(blocks)
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.query_embedding, w.query_embedding, atol=ATOL, rtol=0)
        np.testing.assert_allclose(g.doc_embeddings, w.doc_embeddings, atol=ATOL, rtol=0)
        assert abs(float(g.weight) - float(w.weight)) <= ATOL
    # and the merged results of each request agree
    ra = packed.finish(plan_a, [got[0], got[2]]).results
    rb = single.finish(plan_a, [want[0], want[2]]).results
    assert [r.index for r in ra] == [r.index for r in rb]
    np.testing.assert_allclose([r.relevance_score for r in ra], [r.relevance_score for r in rb], atol=ATOL, rtol=0)


def test_max_pack_tokens_splits_groups(tiny_checkpoint, monkeypatch):
    eng = _engine(tiny_checkpoint, pack_blocks=True, max_pack_tokens=1)
    plan = eng.plan(RerankRequest(query="q", documents=["a", "b", "c"] * 50))
    calls = []
    real = eng.model.embed_blocks
    monkeypatch.setattr(eng.model, "embed_blocks", lambda ids, *a, **k: calls.append(len(ids)) or real(ids, *a, **k))
    eng.run_blocks(plan.blocks)
    assert calls == [1, 1]  # each block over the cap runs alone
    eng.max_pack_tokens = 10**9
    calls.clear()
    eng.run_blocks(plan.blocks)
    assert calls == [2]


def test_default_packs_on_cuda_only(tiny_checkpoint, monkeypatch):
    eng = _engine(tiny_checkpoint)  # pack_blocks=None: decided by device
    plan = eng.plan(RerankRequest(query="q", documents=["a", "b"] * 70))
    calls = []
    real = eng.model.embed_blocks
    monkeypatch.setattr(eng.model, "embed_blocks", lambda ids, *a, **k: calls.append(len(ids)) or real(ids, *a, **k))
    eng.run_blocks(plan.blocks)
    assert calls == [1, 1]  # CPU: one forward per block
