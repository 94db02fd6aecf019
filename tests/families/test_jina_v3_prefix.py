"""Reuse of the fixed system turn (modeling.PrefixCache): its keys and values are computed once, and each
forward runs only the tokens after it. The scores must be those of the whole prompt (float32, 1e-5), for
one block, packed blocks from several requests, both packed attention modes, and the marker-rows-only last
layer; and the engine must really use it (otherwise the test above proves nothing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lastrank.families.jina_v3.prompt import PREFIX
from lastrank.families.jina_v3 import JinaV3Backend as RerankEngine
from lastrank.model.jina import DOC_MARKER_ID, QUERY_MARKER_ID, load_jina_v3
from lastrank.model.attention import Packing
from lastrank.model.tokenizer import JinaV3Tokenizer
from lastrank.types import RerankOptions, RerankRequest

ATOL = 1e-5


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return JinaV3Tokenizer.from_dir(tiny_checkpoint)


def _prompt(n: int, doc_at: list[int], query_at: int, head: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 150000, (n,), generator=g)
    ids[: len(head)] = head
    ids[doc_at] = DOC_MARKER_ID
    ids[query_at] = QUERY_MARKER_ID
    return ids


def test_packing_with_prefix_positions_and_attention_layout():
    p = Packing([3, 2], torch.device("cpu"), prefix_len=4)
    assert p.positions.tolist() == [4, 5, 6, 4, 5]  # after the 4 cached tokens, per sequence
    assert p.attn.seq_lens == [7, 6]
    # compact rows -> rows of the attention layout (each sequence preceded by its 4 prefix rows)
    assert p.attention_rows(torch.tensor([0, 2, 3, 4])).tolist() == [4, 6, 11, 12]
    out = torch.arange(13.0)[None, :, None]
    assert p.attention_output(out).flatten().tolist() == [4, 5, 6, 11, 12]


@pytest.mark.parametrize("attention", ["segments", "mask"])
def test_embed_blocks_with_prefix_equals_whole_prompts(model, attention):
    head = torch.randint(0, 150000, (23,), generator=torch.Generator().manual_seed(1))
    blocks = [_prompt(120, [40, 70, 100], 110, head), _prompt(60, [30], 50, head), _prompt(24 + 2, [23], 25, head)]
    prefix = model.prefix_cache(head)
    assert len(prefix) == 23 and len(prefix.kv) == model.config.num_hidden_layers
    whole = [model.embed_blocks([b], DOC_MARKER_ID, QUERY_MARKER_ID)[0] for b in blocks]
    for got in (model.embed_blocks(blocks, DOC_MARKER_ID, QUERY_MARKER_ID, attention, prefix=prefix),
                [model.embed_blocks([b], DOC_MARKER_ID, QUERY_MARKER_ID, prefix=prefix)[0] for b in blocks]):
        for g, w in zip(got, whole):
            for a, b in zip(g, w):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_backbone_with_prefix_equals_full_forward_on_every_row(model):
    """All rows, not only the markers: the cached rows feed every later row's attention in every layer."""
    ids = torch.randint(0, 150000, (90,), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = model.model(ids)
        prefix = model.prefix_cache(ids[:31])
        torch.testing.assert_close(model.model(ids[31:], prefix=prefix), full[31:], atol=ATOL, rtol=0)
        two = model.model(torch.cat([ids[31:], ids[31:60]]), [59, 29], prefix=prefix)
        torch.testing.assert_close(two, torch.cat([full[31:], full[31:60]]), atol=ATOL, rtol=0)


def test_blocks_without_the_prefix_run_whole(model):
    head = torch.randint(0, 150000, (10,), generator=torch.Generator().manual_seed(3))
    prefix = model.prefix_cache(head)
    other = _prompt(50, [20], 40, torch.zeros(10, dtype=torch.long))
    same = _prompt(50, [20], 40, head)
    want = [model.embed_blocks([b], DOC_MARKER_ID, QUERY_MARKER_ID)[0] for b in (other, same)]
    got = model.embed_blocks([other, same], DOC_MARKER_ID, QUERY_MARKER_ID, prefix=prefix)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_engine_keeps_the_system_turn_from_its_first_forward_and_uses_it_after(model, tokenizer, monkeypatch):
    engine = RerankEngine(model, tokenizer, torch.device("cpu"))
    assert engine.prefix is None  # nothing computed at start-up: the cold start pays nothing for it
    seen = []
    forward = type(model.model).forward

    def spy(self, input_ids, *args, **kw):
        seen.append((input_ids.shape[0], args[3] if len(args) > 3 else kw.get("prefix")))
        return forward(self, input_ids, *args, **kw)

    monkeypatch.setattr(type(model.model), "forward", spy)
    plan = engine.plan(RerankRequest(query="what is a cat", documents=["a cat is an animal", "dogs bark"]))
    first = engine.run_blocks(plan.blocks)
    P = len(tokenizer.encode(PREFIX))
    assert engine.prefix is not None and engine.prefix.ids.tolist() == tokenizer.encode(PREFIX)
    assert len(engine.prefix.kv) == model.config.num_hidden_layers
    assert all(k.shape[1] == P and v.shape[1] == P for k, v in engine.prefix.kv)
    second = engine.run_blocks(plan.blocks)
    (n_first, used_first), (n_second, used_second) = seen
    assert used_first is None and used_second is engine.prefix
    assert n_second == n_first - P
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.doc_embeddings, b.doc_embeddings, atol=ATOL, rtol=0)
    # the rows kept from a request equal the prefix run alone
    alone = model.prefix_cache(tokenizer.encode(PREFIX))
    for (k1, v1), (k2, v2) in zip(engine.prefix.kv, alone.kv):
        torch.testing.assert_close(k1, k2, atol=ATOL, rtol=0)
        torch.testing.assert_close(v1, v2, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pack", [False, True])
def test_engine_scores_equal_with_and_without_prefix_reuse(model, tokenizer, pack):
    docs = [f"passage {i} about {'cats' if i % 3 else 'the weather in Paris'} " * (1 + i % 5) for i in range(40)]
    requests = [
        RerankRequest(query="are cats animals?", documents=docs),
        RerankRequest(query="météo à Paris", documents=docs[:7],
                      options=RerankOptions(instruction="prefer recent passages")),
        RerankRequest(query="x " * 300, documents=docs[:5],
                      options=RerankOptions(max_query_length=40, max_doc_length=8)),
    ]
    on = RerankEngine(model, tokenizer, torch.device("cpu"), pack_blocks=pack)
    off = RerankEngine(model, tokenizer, torch.device("cpu"), pack_blocks=pack, reuse_prefix=False)
    on.warmup()
    off.warmup()
    assert on.prefix is not None and off.prefix is None
    plans = [on.plan(r) for r in requests]
    blocks = [b for p in plans for b in p.blocks]
    assert all(on.prefix.starts(torch.tensor(b.input_ids)) for b in blocks)
    for a, b in zip(on.run_blocks(blocks), off.run_blocks(blocks)):
        np.testing.assert_allclose(a.doc_embeddings, b.doc_embeddings, atol=ATOL, rtol=0)
        np.testing.assert_allclose(a.query_embedding, b.query_embedding, atol=ATOL, rtol=0)
        assert abs(a.weight - b.weight) < ATOL
