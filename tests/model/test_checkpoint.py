"""Random checkpoints (`make_jina_v3_checkpoint`, the test fixtures) against the official layout (spec §2, §3).

Files, config.json fields, tensor names/shapes/dtypes (projector widths from the config, fixed 512
output, no lm_head), the tokenizer's marker tokens, and the `full` preset against the real model's
config and parameter count. The expected values come from the spec, not from lastrank.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

OFFICIAL_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"]

# spec §2.1, verbatim values of the real config.json that do not depend on the model size
CONFIG_INVARIANTS = {
    "architectures": ["JinaForRanking"],
    "auto_map": {"AutoModel": "modeling.JinaForRanking"},
    "model_type": "qwen3",
    "hidden_act": "silu",
    "rope_scaling": None,
    "sliding_window": None,
    "use_sliding_window": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_cache": False,
    "max_position_embeddings": 131072,
}

# spec §2.1 for the real model
FULL_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "max_window_layers": 28,
    "torch_dtype": "bfloat16",
    **CONFIG_INVARIANTS,
}


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Spec §2.3: HF Qwen3 naming, shapes [out, in]; projector hidden -> hidden//2 -> 512."""
    h, i, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (nq * hd, h),
                p + "self_attn.k_proj.weight": (nkv * hd, h),
                p + "self_attn.v_proj.weight": (nkv * hd, h),
                p + "self_attn.o_proj.weight": (h, nq * hd),
                p + "self_attn.q_norm.weight": (hd,),
                p + "self_attn.k_norm.weight": (hd,),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
            }
        )
    shapes["projector.0.weight"] = (h // 2, h)
    shapes["projector.2.weight"] = (512, h // 2)
    return shapes


def test_files(tiny_checkpoint):
    for name in OFFICIAL_FILES:
        assert (Path(tiny_checkpoint) / name).is_file(), name


def test_config_fields(tiny_checkpoint):
    cfg = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    for k, v in CONFIG_INVARIANTS.items():
        assert cfg.get(k, "<missing>") == v, (k, cfg.get(k, "<missing>"), v)
    assert cfg["torch_dtype"] == "bfloat16"
    assert "embedding_size" not in cfg  # the 512 is hard-coded in modeling.py, not in the config (§2.1)


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 4}, {"head_dim": 32}])
def test_tensor_names_shapes_dtypes(make_tiny_checkpoint, overrides):
    path = Path(make_tiny_checkpoint(**overrides))
    cfg = json.loads((path / "config.json").read_text())
    want = expected_shapes(cfg)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert not [k for k in got if k.startswith("lm_head")], "no lm_head in the official layout"
    assert sorted(set(got) - set(want)) == [], "unexpected tensors"
    assert sorted(set(want) - set(got)) == [], "missing tensors"
    assert got == want
    assert dtypes == {"BF16"}


def test_float32_on_disk(make_tiny_checkpoint):
    path = Path(make_tiny_checkpoint(seed=5, dtype="float32"))
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_tokenizer_files_carry_markers(tiny_checkpoint):
    added = json.loads((Path(tiny_checkpoint) / "added_tokens.json").read_text())
    assert added["<|embed_token|>"] == 151670
    assert added["<|rerank_token|>"] == 151671
    assert added["<|endoftext|>"] == 151643 and added["<|im_start|>"] == 151644 and added["<|im_end|>"] == 151645
    assert added["<think>"] == 151667 and added["</think>"] == 151668
    tj = json.loads((Path(tiny_checkpoint) / "tokenizer.json").read_text())
    special = {t["content"]: t for t in tj["added_tokens"]}
    for marker, tid in (("<|embed_token|>", 151670), ("<|rerank_token|>", 151671)):
        assert special[marker]["id"] == tid
        assert special[marker]["special"] is True
        assert special[marker]["lstrip"] is False and special[marker]["rstrip"] is False


def test_seeds_differ(make_tiny_checkpoint):
    a, b = Path(make_tiny_checkpoint(seed=0)), Path(make_tiny_checkpoint(seed=5, dtype="float32"))  # cached elsewhere
    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        assert not torch.equal(fa.get_tensor("projector.0.weight").float(), fb.get_tensor("projector.0.weight").float())
        # norms are not all-ones, so a norm applied in the wrong place changes numbers
        assert not torch.all(fa.get_tensor("model.norm.weight") == 1)


def test_full_preset_matches_real_config():
    from lastrank.checkpoints.jina_v3 import SHAPES, config_json

    cfg = config_json(SHAPES["full"])
    for k, v in FULL_CONFIG.items():
        if k == "max_window_layers" and k not in cfg:
            continue  # not needed by a Qwen3 without sliding window
        assert cfg.get(k, "<missing>") == v, (k, cfg.get(k, "<missing>"), v)


def test_full_preset_parameter_count_and_names():
    """Spec §2.3: backbone 596,049,920 + projector 786,432 = 596,836,352 parameters, with the official names."""
    from lastrank.checkpoints.jina_v3 import SHAPES, config_json
    from lastrank.model.jina import JinaForRanking
    from transformers import Qwen3Config, Qwen3Model

    hf = config_json(SHAPES["full"])
    with torch.device("meta"):
        ref = Qwen3Model(Qwen3Config(**{k: v for k, v in hf.items() if k not in ("architectures", "auto_map")}))
        ours = JinaForRanking(SHAPES["full"])
    assert sum(p.numel() for p in ref.parameters()) == 596_049_920
    sd = ours.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == expected_shapes(hf)
    assert sum(v.numel() for v in sd.values()) == 596_836_352
