"""Random-weight checkpoints in the official jinaai/jina-reranker-v3 layout.

Their scores mean nothing. They exist so that every code path (loading, tokenizer, prompt, blocks,
server, eval, benchmarks) can run here, where no model hub is reachable.

Every folder `make_checkpoint` writes is marked twice, so no output can pass its numbers off as a model's:
``"lastrank_random_weights": true`` in config.json (what `is_random_checkpoint` reads) and a
RANDOM_WEIGHTS.txt next to the weights (what a person listing the folder sees). `lastrank rerank`, `lastrank
eval` (report and plot) and the server say so whenever they run one.

This module imports torch only inside `make_checkpoint`, so `is_random_checkpoint` is cheap to call.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from lastrank.model.jina import JinaForRanking

NOTICE = "random weights from `lastrank make-checkpoint`: its scores are meaningless; for tests and benchmarks only"
RANDOM_WEIGHTS_KEY = "lastrank_random_weights"  # config.json field
RANDOM_WEIGHTS_FILE = "RANDOM_WEIGHTS.txt"


def is_random_checkpoint(path: str | Path) -> bool:
    """True for a folder written by `lastrank make-checkpoint` (random weights: scores mean nothing).

    Reads only config.json (and looks for RANDOM_WEIGHTS.txt). Folders made before the marker existed are
    recognised by the `lastrank_notice` field they carry. A missing or unreadable folder is False: this
    says what a folder is, it does not check that it loads."""
    folder = Path(path)
    if (folder / RANDOM_WEIGHTS_FILE).is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (config.get(RANDOM_WEIGHTS_KEY) is True or "lastrank_notice" in config)


def random_state_dict(model: JinaForRanking, seed: int) -> dict[str, torch.Tensor]:
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight") or "layernorm" in name:
            # Around 1, but not 1: a norm applied in the wrong place must change the numbers.
            sd[name] = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
        else:
            sd[name] = 0.02 * torch.randn(p.shape, generator=g)
    return sd


def make_checkpoint(
    path: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "bfloat16",
    model_max_length: int = 131072,
    **config_overrides,
) -> Path:
    import torch
    from safetensors.torch import save_file

    from lastrank.model.config import PRESETS
    from lastrank.model.jina import JinaForRanking
    from lastrank.model.tokenizer import write_jina_tokenizer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = replace(PRESETS[preset], torch_dtype=dtype, **config_overrides)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = JinaForRanking(cfg)
    sd = random_state_dict(model, seed)
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf = cfg.to_hf_dict()
    hf["_name_or_path"] = "jinaai/jina-reranker-v3"
    hf[RANDOM_WEIGHTS_KEY] = True
    hf["lastrank_notice"] = NOTICE
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    write_jina_tokenizer(out, model_max_length=model_max_length)
    (out / "README.md").write_text(f"# Random jina-reranker-v3-shaped checkpoint\n\n{NOTICE}.\npreset={preset} seed={seed} dtype={dtype}\n")
    (out / RANDOM_WEIGHTS_FILE).write_text(
        f"RANDOM WEIGHTS: this folder was written by `lastrank make-checkpoint --preset {preset} --seed {seed}`.\n"
        f"Its weights are random numbers, not a trained model: every score it produces is meaningless.\n"
        f"It exists so that loading, serving, evaluation and benchmarks can run without the real weights.\n")
    return out
