"""The speed machinery beside the decoder math (model/decoder.py) that is not attention:
  - `fuse_projections`: q/k/v and gate/up weights as one matrix each, aliasing the loaded storage;
  - `enable_compile`: opt-in torch.compile of the one-sequence layer.
Packing, prefix caches and the packed attention are in model/attention.py. Both are tested equal to the
plain forward in float32 (tests/model/test_fast_path.py, tests/model/test_decoder.py); numbers in
docs/benchmarks.md.
"""

from __future__ import annotations

import torch
from torch import nn

from lastrank.model.attention import KV, ONE_SEQUENCE
from lastrank.model.config import QwenConfig
from lastrank.model.decoder import DecoderLayer


def _causal_layer(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  prefix: KV | None) -> torch.Tensor:
    return layer(x, cos, sin, None if prefix is None else ONE_SEQUENCE, None, prefix)


def enable_compile(model: nn.Module) -> None:
    """Opt-in: torch.compile (Inductor) of the decoder layer for one-sequence forwards, every layer but the
    last (the rows-only last layer and packed forwards stay eager). `model`: a head whose backbone is
    `model.model` (JinaForRanking, the causal-LM heads).

    Why: Inductor fuses the element-wise work (norms, RoPE, SiLU, casts, residuals) into few kernels:
    `Reranker.rerank` at 2K went from 1.00x to 1.09x the reference path (1 thread, CPU time, this machine;
    docs/benchmarks.md). Why opt-in: the first compile takes 17 s for the full model here and a process
    with a warm cache still needs ~10 s to its first result, far beyond the 3 s cold-start budget. The
    compiled code is cached on disk by Inductor's FX graph cache (in TORCHINDUCTOR_CACHE_DIR when the
    caller's environment sets it; this function never writes the environment), so later processes skip
    most of it. One graph serves all layers (their weights are inputs) and all lengths (dynamic=True).
    """
    model.model.compiled_layer = torch.compile(_causal_layer, dynamic=True)


def fused_groups(cfg: QwenConfig) -> list[list[str]]:
    """The official tensor names that fuse_projections concatenates (what
    weights.read_safetensors places side by side), in its order."""
    groups = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        groups.append([p + f"self_attn.{x}_proj.weight" for x in "qkv"])
        groups.append([p + f"mlp.{x}_proj.weight" for x in ("gate", "up")])
    return groups


def fuse_projections(model: nn.Module) -> None:
    """Concatenate each layer's q/k/v (weights and, for Qwen2, biases) and gate/up weights into one matrix,
    at load time. `model`: a head whose backbone is `model.model`.

    Why: one [T,1024]x[1024,4096] product instead of three, one [T,1024]x[1024,6144] instead of two: fewer,
    larger products and fewer calls (5-6% on the products alone at T=2048, bf16; a whole layer measured
    neutral within +-3% on this CPU; fewer kernel launches is the usual gain on a GPU, not measured here).
    Kept because it costs nothing: weights.read_safetensors reads the weights side by side, so this is a view.
    The official parameters stay where strict loading and state_dict() expect them (same names, shapes,
    values): after fusion they are *views* into the fused matrix, so nothing is stored twice. Call it after
    the weights are loaded; assigning a new Parameter to q_proj etc. later would not update the fused one.
    """
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_weight = _fuse([attn.q_proj, attn.k_proj, attn.v_proj], "weight")
        if attn.q_proj.bias is not None:
            attn.qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj], "bias")
        mlp.gate_up_weight = _fuse([mlp.gate_proj, mlp.up_proj], "weight")


def _fuse(linears: list[nn.Linear], name: str) -> torch.Tensor:
    params = [getattr(lin, name).detach() for lin in linears]
    rows = sum(p.shape[0] for p in params)
    if all(p.is_contiguous() and p.untyped_storage().data_ptr() == params[0].untyped_storage().data_ptr()
           for p in params) and all(b.storage_offset() == a.storage_offset() + a.numel() for a, b in zip(params, params[1:])):
        # Already side by side in one buffer (weights.read_safetensors placed them so): a view, no copy.
        return params[0].as_strided((rows, *params[0].shape[1:]), params[0].stride())
    fused = torch.cat(params, dim=0)
    start = 0
    for lin, p in zip(linears, params):
        n = p.shape[0]
        setattr(lin, name, nn.Parameter(fused[start:start + n], requires_grad=getattr(lin, name).requires_grad))
        start += n
    return fused
