"""The fast path computes what the official forward computes, only less of it.

Every shortcut in modeling.py is checked here in float32 against the plain computation: transformers'
Qwen3Model for the backbone, HF's rotate_half RoPE, the full forward indexed at the markers, the unfused
projections. Speed is measured by `lastrank bench`, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lastrank.model.jina import DOC_MARKER_ID, QUERY_MARKER_ID
from lastrank.model.jina import load_jina_v3
from lastrank.model.attention import apply_rope, rotate_half
from lastrank.model.fusion import fuse_projections

ATOL = 1e-5


def hf_backbone(checkpoint):
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config.from_pretrained(str(checkpoint), attn_implementation="sdpa")
    model = Qwen3Model(config)
    state = load_file(str(checkpoint / "model.safetensors"))
    model.load_state_dict({k[len("model."):]: v.float() for k, v in state.items() if k.startswith("model.")}, strict=True)
    return model.eval()


def random_prompt(n: int, doc_positions, seed: int = 0, tail: int = 12) -> torch.Tensor:
    """Token ids with doc markers at doc_positions, the query marker at n - tail - 1 and `tail` tokens after."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 150000, (n,), generator=g)
    ids[list(doc_positions)] = DOC_MARKER_ID
    ids[n - tail - 1] = QUERY_MARKER_ID
    return ids


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    return {fuse: load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.float32, fuse=fuse) for fuse in (False, True)}


@pytest.mark.parametrize("fuse", [False, True])
def test_backbone_matches_transformers_qwen3(models, tiny_checkpoint, fuse):
    hf = hf_backbone(tiny_checkpoint)
    ids = random_prompt(300, [10, 100, 200])
    with torch.inference_mode():
        ours = models[fuse].model(ids)
        ref = hf(input_ids=ids[None]).last_hidden_state[0]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_rope_matches_hf_rotate_half():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 37, 16, generator=g)
    cos, sin = torch.randn(37, 16, generator=g), torch.randn(37, 16, generator=g)
    torch.testing.assert_close(apply_rope(x, cos, sin), x * cos + rotate_half(x) * sin, atol=1e-6, rtol=0)
    # on a transposed view too (the layout the attention hands it)
    xt = torch.randn(37, 4, 16, generator=g).transpose(0, 1)
    torch.testing.assert_close(apply_rope(xt, cos, sin), xt * cos + rotate_half(xt) * sin, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fuse", [False, True])
def test_marker_rows_only_equal_full_forward_rows(models, fuse):
    """Last layer at the marker rows only + the final norm at those rows == full forward, then indexed."""
    model = models[fuse].model
    ids = random_prompt(257, [0, 5, 130, 240])
    rows = torch.tensor([0, 5, 130, 240, 244])
    with torch.inference_mode():
        full = model(ids)
        some = model(ids, rows=rows)
    torch.testing.assert_close(some, full[rows], atol=ATOL, rtol=0)


def naive_embed(model, ids):
    """The official forward (model-spec §5): full sequence, index the markers, project, cosine."""
    with torch.inference_mode():
        h = model.model(ids)
        d = model.projector(h[ids == DOC_MARKER_ID])
        q = model.projector(h[ids == QUERY_MARKER_ID])
        return q[0], d, F.cosine_similarity(d, q.expand_as(d), dim=-1)


@pytest.mark.parametrize("fuse", [False, True])
def test_embed_equals_official_forward(models, fuse):
    """Cutting the prompt after the query marker and the marker-only last layer change nothing read."""
    model = models[fuse]
    ids = random_prompt(400, [20, 90, 91, 300], tail=15)
    q, d, s = model.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0]
    q0, d0, s0 = naive_embed(model, ids)
    torch.testing.assert_close(q, q0, atol=ATOL, rtol=0)
    torch.testing.assert_close(d, d0, atol=ATOL, rtol=0)
    torch.testing.assert_close(s, s0, atol=ATOL, rtol=0)


def test_embed_rejects_marker_counts(models):
    model = models[True]
    ids = random_prompt(50, [3])
    two_queries = ids.clone()
    two_queries[10] = QUERY_MARKER_ID
    with pytest.raises(RuntimeError, match="exactly one query marker"):
        model.embed_blocks([two_queries], DOC_MARKER_ID, QUERY_MARKER_ID)
    doc_after_query = ids.clone()
    doc_after_query[-2] = DOC_MARKER_ID
    with pytest.raises(RuntimeError, match="follows the query marker"):
        model.embed_blocks([doc_after_query], DOC_MARKER_ID, QUERY_MARKER_ID)


def test_fusion_keeps_official_parameters(tiny_checkpoint, models):
    """Strict loading by official names still works; state_dict() is unchanged; nothing is stored twice."""
    fused, plain = models[True], models[False]
    on_disk = load_file(str(tiny_checkpoint / "model.safetensors"))
    state = fused.state_dict()
    assert set(state) == set(on_disk)
    for k, v in on_disk.items():
        assert torch.equal(state[k], v.float()), k
    attn, mlp = fused.model.layers[0].self_attn, fused.model.layers[0].mlp
    assert attn.qkv_weight is not None and mlp.gate_up_weight is not None
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.qkv_weight.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == mlp.gate_up_weight.untyped_storage().data_ptr()
    assert plain.model.layers[0].self_attn.qkv_weight is None
    # fusing again (e.g. a model fused by hand after loading) is harmless
    fuse_projections(plain)
    ids = random_prompt(120, [7, 60])
    for a, b in zip(plain.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0],
                    fused.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_bf16_fast_path_close_to_float32(tiny_checkpoint):
    """bf16 stays a bf16 approximation of float32: cosines within a few bf16 ulps on the tiny model."""
    m16 = load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.bfloat16)
    m32 = load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.float32)
    ids = random_prompt(300, [10, 50, 120, 200])
    s16 = m16.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0][2].float()
    s32 = m32.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0][2]
    # measured 9e-4 on cosines spanning 0.09-0.17 (a bf16 ulp there is 2^-10 ~ 1e-3): the bound is 4 ulps,
    # a twentieth of that spread (0.05, the bound before, was over half of it)
    assert s32.max() - s32.min() > 0.03
    assert (s16 - s32).abs().max() < 4e-3


def test_bench_quick_runs(tmp_path):
    """`lastrank bench --quick` runs end to end (reference path, fresh-process probes, table). No timing checked."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lastrank", "bench", "--quick", "--cases", "2k", "--repeat", "1",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| case |" in proc.stdout and "cold start" in proc.stdout
    res = json.loads(out.read_text())
    row = res["cases"]["2k"]
    assert row["lastrank_tok_s"] > 0 and row["reference_tok_s"] > 0 and row["peak_rss_gb"] > 0
    # Same checkpoint, same bf16, two implementations: measured max |score diff| 6e-4 and tau 1.0 on the
    # quick 2k case's 3 documents (any swap there gives tau <= 1/3).
    assert row["documents"] == 3 and res["machine"]["reference"].endswith("benchmarks/reference_path.py")
    assert row["max_abs_score_diff_vs_reference"] < 4e-3
    assert row["kendall_tau_vs_reference"] == 1.0
    assert res["cold_start"]["first_result_s"] > 0


def test_opt_in_compile_matches_eager(tiny_checkpoint, tmp_path, monkeypatch):
    """LASTRANK_COMPILE=1 -> torch.compile'd layers; same float32 results as eager (Inductor may reorder
    float operations, hence 1e-5, not equality)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("LASTRANK_COMPILE", "1")
    compiled = load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.float32)
    monkeypatch.delenv("LASTRANK_COMPILE")
    eager = load_jina_v3(tiny_checkpoint, torch.device("cpu"), torch.float32)
    assert compiled.model.compiled_layer is not None and eager.model.compiled_layer is None
    for n in (300, 171):  # two lengths: one dynamic graph
        ids = random_prompt(n, [10, 100, 150])
        for a, b in zip(compiled.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0],
                        eager.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0]):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # with a cached prefix the compiled layers read its keys and values (the engine's default path)
    ids = random_prompt(300, [10, 100, 150])
    prefix = compiled.prefix_cache(ids[:7])
    for a, b in zip(compiled.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID, prefix=prefix)[0],
                    eager.embed_blocks([ids], DOC_MARKER_ID, QUERY_MARKER_ID)[0]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_reader_places_fused_weights_side_by_side_and_moves_them_together(tiny_checkpoint):
    """read_safetensors: q/k/v (and gate/up) as consecutive rows of one buffer; to_device (the CUDA load
    path, exercised here with the CPU as target) keeps them views of one moved buffer."""
    from lastrank.model.config import QwenConfig
    from lastrank.model.fusion import fused_groups
    from lastrank.model.weights import read_safetensors, to_device

    cfg = QwenConfig.from_file(tiny_checkpoint / "config.json")
    state = read_safetensors(tiny_checkpoint / "model.safetensors", torch.float32, fused_groups(cfg), skip=("lm_head.weight",))
    on_disk = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert set(state) == set(on_disk) - {"lm_head.weight"}
    for k, v in state.items():
        assert torch.equal(v, on_disk[k].float()), k
    moved = to_device(state, torch.device("cpu"))
    q, k, v = (moved[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
    assert q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert k.storage_offset() == q.storage_offset() + q.numel()
    for name in state:
        assert torch.equal(moved[name], state[name]), name
