"""The causal-LM reranker model (model/causal_lm.py) and its random checkpoints (checkpoints/causal.py).

The fast path (shared prefix computed once, pairs packed into one forward, last layer at the last rows only,
two LM-head rows) must give the plain per-pair forward's raw scores in float32 (1e-5); the plain forward
itself must be transformers' (Qwen3ForCausalLM / Qwen2ForCausalLM logits at the last position). The loader
must read untied LM heads (rows only) and sharded checkpoints.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lastrank.families.causal_lm import MXBAI_RERANK_V2, QWEN3_RERANKER, score_token_ids
from lastrank.model.causal_lm import load_causal_lm
from lastrank.checkpoints.causal import make_causal_checkpoint

ATOL = 1e-5


def _tokenizer(folder):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal_model")
    return {
        "qwen3": make_causal_checkpoint(root / "q3", "qwen3-reranker", dtype="float32", seed=1),
        "mxbai": make_causal_checkpoint(root / "mx", "mxbai-rerank-v2", dtype="float32", seed=2),
        "untied": make_causal_checkpoint(root / "q3u", "qwen3-reranker", dtype="float32", seed=4,
                                         tie_word_embeddings=False),
    }


def _model(folder, kind):
    return load_causal_lm(folder, torch.device("cpu"), torch.float32, score_token_ids(kind, _tokenizer(folder)))


def _sequences(n: int, shared: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, 150000, (shared,), generator=g).tolist()
    return [head + torch.randint(0, 150000, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("name, kind", [("qwen3", QWEN3_RERANKER), ("mxbai", MXBAI_RERANK_V2), ("untied", QWEN3_RERANKER)])
def test_plain_forward_is_transformers(folders, name, kind):
    from transformers import AutoModelForCausalLM

    folder = folders[name]
    model = _model(folder, kind)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    pos, neg = score_token_ids(kind, _tokenizer(folder))
    for ids in _sequences(3, 10, seed=5):
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([ids])).logits[0, -1]
        assert abs(model.score_plain(ids) - float(logits[pos] - logits[neg])) <= ATOL


@pytest.mark.parametrize("name, kind", [("qwen3", QWEN3_RERANKER), ("mxbai", MXBAI_RERANK_V2)])
def test_shared_prefix_packed_equals_plain_per_pair(folders, name, kind):
    model = _model(folders[name], kind)
    seqs = _sequences(9, 37, seed=6)
    plain = np.array([model.score_plain(s) for s in seqs])
    for prefix_len in (0, 1, 37):
        got = model.score_last(seqs, prefix_len).numpy()
        np.testing.assert_allclose(got, plain, atol=ATOL, rtol=0)
    with pytest.raises(ValueError):
        model.score_last([seqs[0][:37]], 37)  # nothing of its own after the prefix


def test_backend_groups_prefixes_and_chunks_forwards(folders):
    """Blocks of two requests (two prefixes) in one call, with forwards capped at a few tokens: same scores as
    each pair alone, and as with the prefix reuse off."""
    from lastrank.families import load_backend

    backend = load_backend(str(folders["qwen3"]), device="cpu", dtype="float32")
    a, b = _sequences(5, 30, seed=7), _sequences(4, 12, seed=8)
    plain = np.array([backend.model.score_plain(s) for s in a + b])
    lens = [30] * 5 + [12] * 4
    calls = []
    real = backend.model.model.forward
    backend.model.model.forward = lambda ids, *a, **k: calls.append(ids.shape[0]) or real(ids, *a, **k)
    try:
        for max_tokens, reuse in ((16384, True), (50, True), (16384, False)):
            backend.max_forward_tokens, backend.reuse_prefix = max_tokens, reuse
            calls.clear()
            np.testing.assert_allclose(backend.score_sequences(a + b, lens), plain, atol=ATOL, rtol=0)
            if max_tokens == 16384 and reuse:  # both prefixes in one forward, every pair's own tokens in one
                assert calls == [30 + 12, sum(len(s) for s in a + b) - 30 * 5 - 12 * 4]
    finally:
        del backend.model.model.forward
        backend.max_forward_tokens, backend.reuse_prefix = 16384, True


@pytest.mark.parametrize("attention", ["segments", "mask"])
def test_backbone_with_one_prefix_per_sequence_equals_full_forward(folders, attention):
    """fast.PrefixCaches: sequences with different prefixes (and one with none) in one forward, every row."""
    from lastrank.model.attention import PrefixCache, PrefixCaches

    backbone = _model(folders["mxbai"], MXBAI_RERANK_V2).model
    g = torch.Generator().manual_seed(10)
    seqs = [torch.randint(0, 150000, (n,), generator=g) for n in (50, 31, 20)]
    cuts = [17, 0, 9]
    caches = [PrefixCache(s[:c]) if c else None for s, c in zip(seqs, cuts)]
    with torch.inference_mode():
        PrefixCaches.fill(backbone, [c for c in caches if c is not None])
        full = [backbone(s) for s in seqs]
        tails = [s[c:] for s, c in zip(seqs, cuts)]
        got = backbone(torch.cat(tails), [len(t) for t in tails], attention=attention, prefix=PrefixCaches(caches))
    torch.testing.assert_close(got, torch.cat([f[c:] for f, c in zip(full, cuts)]), atol=ATOL, rtol=0)


def test_head_keeps_two_rows_only(folders):
    model = _model(folders["untied"], QWEN3_RERANKER)
    assert tuple(model.head.shape) == (2, model.config.hidden_size)
    state = load_file(str(folders["untied"] / "model.safetensors"))
    yes, no = score_token_ids(QWEN3_RERANKER, _tokenizer(folders["untied"]))
    assert torch.equal(model.head, state["lm_head.weight"][[yes, no]])  # not the embedding rows
    assert not torch.equal(model.head, state["model.embed_tokens.weight"][[yes, no]])


def test_sharded_checkpoint_loads_like_one_file(folders, tmp_path):
    src = folders["mxbai"]
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    # split mid-way through a layer, so a fused q/k/v group spans both shards
    half = names.index("model.layers.0.self_attn.k_proj.weight")
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(tmp_path / file), metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    one, sharded = _model(src, MXBAI_RERANK_V2), _model(tmp_path, MXBAI_RERANK_V2)
    seqs = _sequences(3, 5, seed=9)
    np.testing.assert_allclose(sharded.score_last(seqs).numpy(), one.score_last(seqs).numpy(), atol=0, rtol=0)


def test_checkpoint_layouts(folders, tmp_path):
    q3 = json.loads((folders["qwen3"] / "config.json").read_text())
    mx = json.loads((folders["mxbai"] / "config.json").read_text())
    assert (q3["architectures"], q3["model_type"], q3["tie_word_embeddings"]) == (["Qwen3ForCausalLM"], "qwen3", True)
    assert (mx["architectures"], mx["model_type"]) == (["Qwen2ForCausalLM"], "qwen2") and "attention_bias" not in mx
    assert q3["lastrank_random_weights"] and (folders["qwen3"] / "RANDOM_WEIGHTS.txt").is_file()
    mx_state = load_file(str(folders["mxbai"] / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.bias" in mx_state and "model.layers.0.self_attn.q_norm.weight" not in mx_state
    assert "lm_head.weight" not in mx_state  # tied
    # Qwen3's tokenizer has <think> as one token (the prompt's suffix uses it); Qwen2.5's (mxbai) does not
    assert _tokenizer(folders["qwen3"]).encode("<think>", add_special_tokens=False).ids == [151667]
    assert len(_tokenizer(folders["mxbai"]).encode("<think>", add_special_tokens=False).ids) > 1
    seq_cls = make_causal_checkpoint(tmp_path / "sc", "qwen3-reranker-seq-cls", dtype="float32", seed=1)
    sc_state, q3_state = load_file(str(seq_cls / "model.safetensors")), load_file(str(folders["qwen3"] / "model.safetensors"))
    yes, no = score_token_ids(QWEN3_RERANKER, _tokenizer(seq_cls))
    emb = q3_state["model.embed_tokens.weight"]
    assert torch.equal(sc_state["score.weight"], (emb[yes] - emb[no])[None])
