"""Random-weight checkpoints in the official jinaai/jina-reranker-v3 layout (`make_jina_v3_checkpoint`, of
the shapes in SHAPES), and the random weights every writer here draws (`random_state_dict`).

Their scores mean nothing. They exist so that every code path (loading, tokenizer, prompt, blocks,
server, eval, benchmarks) can run here, where no model hub is reachable. Each folder is marked as random
(model/checkpoint.py). The preset table (checkpoints/__init__.py) names the writers without importing them,
so `lastrank make-checkpoint --help` stays torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY
from lastrank.model.config import QwenConfig
from lastrank.model.jina import JinaForRanking
from lastrank.model.tokenizer import write_jina_tokenizer


def random_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight") or "layernorm" in name:
            # Around 1, but not 1: a norm applied in the wrong place must change the numbers.
            sd[name] = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
        else:
            sd[name] = 0.02 * torch.randn(p.shape, generator=g)
    return sd


# The backbone's shape by size: "full" is jina-reranker-v3's (Qwen3-0.6B, QwenConfig's defaults); "tiny" is
# small enough for a CPU test suite, with the real vocabulary so the real tokenizer works.
SHAPES: dict[str, QwenConfig] = {
    "full": QwenConfig(),
    "tiny": QwenConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16),
}


def config_json(cfg: QwenConfig) -> dict:
    """config.json as the official jina-reranker-v3 checkpoint spells it."""
    d = asdict(cfg)
    d.update(
        architectures=["JinaForRanking"],
        auto_map={"AutoModel": "modeling.JinaForRanking"},
        bos_token_id=151643,
        eos_token_id=151645,
        rope_scaling=None,
        max_window_layers=cfg.num_hidden_layers,
        sliding_window=None,
        use_sliding_window=False,
        attention_dropout=0.0,
        use_cache=False,
        initializer_range=0.02,
        transformers_version="4.55.2",
    )
    return d


def make_jina_v3_checkpoint(
    path: str | Path,
    size: str = "tiny",
    seed: int = 0,
    dtype: str = "bfloat16",
    model_max_length: int = 131072,
    **config_overrides,
) -> Path:
    if size not in SHAPES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SHAPES)}")
    cfg = replace(SHAPES[size], torch_dtype=dtype, **config_overrides)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = JinaForRanking(cfg)
    sd = random_state_dict(model, seed)
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf = config_json(cfg)
    hf["_name_or_path"] = "jinaai/jina-reranker-v3"
    hf[RANDOM_WEIGHTS_KEY] = True
    hf["lastrank_notice"] = NOTICE
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    write_jina_tokenizer(out, model_max_length=model_max_length)
    (out / "README.md").write_text(f"# Random jina-reranker-v3-shaped checkpoint\n\n{NOTICE}.\npreset=jina-v3-{size} seed={seed} dtype={dtype}\n")
    (out / RANDOM_WEIGHTS_FILE).write_text(
        f"RANDOM WEIGHTS: this folder was written by `lastrank make-checkpoint --preset jina-v3-{size} --seed {seed}`.\n"
        f"Its weights are random numbers, not a trained model: every score it produces is meaningless.\n"
        f"It exists so that loading, serving, evaluation and benchmarks can run without the real weights.\n")
    return out
