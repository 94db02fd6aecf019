"""A Qwen2 / Qwen3 decoder used as a sentence encoder (the backbone of last-token-pooling bi-encoders such as
jinaai/jina-code-embeddings-0.5b): the shared decoder of model/decoder.py, no head, loaded strictly.

    load_decoder_encoder(folder, device, dtype) -> DecoderEncoder
    DecoderEncoder(input_ids [T], seq_lens, rows=None) -> final hidden states [T or len(rows), hidden]

Checkpoint layouts: transformers' Qwen2Model / Qwen3Model names (`embed_tokens.weight`, `layers.{i}...`,
`norm.weight`; what a sentence-transformers folder saved from the bare model holds) or the *ForCausalLM names
(`model.` prefix; `lm_head.weight`, if present, is never read). Everything else must match exactly.
Packing and the rows-only last layer are model/attention.py's, fused projections model/fusion.py's (one
implementation for every decoder family); loading is model/weights.py's strict_load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.config import QwenConfig
from lastrank.model.decoder import DecoderModel
from lastrank.model.fusion import fused_groups
from lastrank.model.weights import checkpoint_files, read_safetensors, strict_load, weights_file


class DecoderEncoder(nn.Module):
    """`model`: the backbone under the name fusion.fuse_projections / fusion.enable_compile expect."""

    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)

    def forward(self, input_ids: torch.Tensor, seq_lens: list[int] | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Packed causal sequences -> final hidden states (after the final norm), at `rows` only when given
        (the last layer then runs at those rows only: what last-token pooling reads)."""
        if seq_lens is None and rows is None:
            return self.model(input_ids)
        return self.model(input_ids, seq_lens=seq_lens, rows=rows)


def load_decoder_encoder(folder: Path, device: torch.device, dtype: torch.dtype, fuse: bool = True) -> DecoderEncoder:
    from safetensors import safe_open

    try:
        cfg = QwenConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, TypeError, ValueError) as e:
        raise ModelNotAvailableError(f"{folder / 'config.json'} is not a usable Qwen2/Qwen3 config: {e}") from e
    files = checkpoint_files(folder)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            names = list(f.keys())
        # the *ForCausalLM layout has the backbone under `model.`; the bare backbone has no prefix
        prefix = "model." if any(n.startswith("model.") for n in names) else ""
        groups = [[prefix + n.removeprefix("model.") for n in g] for g in fused_groups(cfg)] if fuse else ()
        part = read_safetensors(file, dtype, groups, skip=("lm_head.weight",))
        state.update({"model." + k.removeprefix(prefix): v for k, v in part.items()})
    return strict_load(lambda: DecoderEncoder(cfg), state, device, weights_file(files), fuse=fuse)
