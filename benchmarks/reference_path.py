"""The reference path `lastrank bench` measures lastrank against: the official forward on transformers.

transformers' Qwen3Model (SDPA attention) + the projector, in the bench dtype and on the bench device, run
on the very block prompts lastrank's plan makes (token ids in, query vector, document vectors and the
per-document cosines out, as the official `JinaForRanking.forward` reads them at the marker tokens).

It lives here, in the repository, and not in the installed package, because transformers is not a runtime
dependency of lastrank: the `test` extra declares it (`pip install -e ".[test]"`). `lastrank bench` loads
this file from the source checkout (or from --reference FILE) and runs without a reference, saying why,
when the file or transformers is missing. tests/support/reference_impl.py is the float32 reference the parity
tests use; this one is built for speed comparisons (weights assigned from a meta-device model, so the 0.6B
parameters are never randomly initialised first).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding


class ReferencePath:
    """The official forward on transformers' Qwen3Model (SDPA) + the projector, in the bench dtype."""

    def __init__(self, checkpoint: Path, dtype: torch.dtype, device="cpu"):
        checkpoint = Path(checkpoint)
        config = Qwen3Config.from_pretrained(str(checkpoint), attn_implementation="sdpa")
        config.dtype = dtype
        state = load_file(str(checkpoint / "model.safetensors"))
        with torch.device("meta"):  # no random init of 0.6B parameters; the checkpoint's are assigned below
            backbone = Qwen3Model(config)
        backbone.load_state_dict({k[len("model."):]: v.to(dtype) for k, v in state.items() if k.startswith("model.")},
                                 strict=True, assign=True)
        backbone.rotary_emb = Qwen3RotaryEmbedding(config)  # its inv_freq buffer is computed, not loaded
        self.backbone = backbone.eval().to(device)
        self.device = device
        w0, w2 = state["projector.0.weight"].to(dtype), state["projector.2.weight"].to(dtype)
        self.projector = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0], bias=False), nn.ReLU(),
                                       nn.Linear(w2.shape[1], w2.shape[0], bias=False))
        self.projector.load_state_dict({"0.weight": w0, "2.weight": w2}, assign=True)
        self.projector.to(device)

    def run_block(self, input_ids: list[int], doc_id: int, query_id: int):
        """(query vector [dim], document vectors [n, dim], cosines [n]) of one block prompt, in the model dtype."""
        with torch.no_grad():
            ids = torch.tensor([input_ids], device=self.device)
            h = self.backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
            d = self.projector(h[ids == doc_id].view(1, -1, h.shape[-1]))
            q = self.projector(h[ids == query_id].unsqueeze(1))
            s = F.cosine_similarity(d, q.expand_as(d), dim=-1)
        return q[0], d[0], s.view(-1)
