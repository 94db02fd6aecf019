"""The Qwen3 / Qwen2 decoder: RMSNorm, RoPE, attention, MLP, layers, the backbone. The math alone.

Module attributes mirror the checkpoints' tensor names (`layers.{i}.self_attn.q_proj`, `norm`, ...), so
official safetensors load strictly with no rename table. The math follows transformers' `modeling_qwen3.py`
and `modeling_qwen2.py` operation for operation, including where they cast, so float32 results match them
to rounding. One implementation serves both, switched by the config (model/config.py):
  - Qwen3: q_norm / k_norm on each head before RoPE, no biases;
  - Qwen2: q/k/v biases, no q/k norms.

What is not textbook math lives beside this file: model/attention.py (RoPE, SDPA, packing several sequences
into one forward, a cached prefix, computing the last layer at a few rows only) and model/fusion.py, which
builds on this file (fused projection weights, the opt-in torch.compile). This file meets them at two seams
only: the backbone's options (seq_lens, rows, prefix, on_kv) make an `attention.Packing`, and
`Attention.forward` hands everything but "one whole sequence" to its `attend`; the projections use fused
weights when `fusion.fuse_projections` set them.

Shapes: one sequence (or several packed ones) without a batch dimension: x is [T, hidden].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lastrank.model.attention import KV, Packing, PrefixCache, PrefixCaches, apply_rope, sdpa
from lastrank.model.config import QwenConfig



class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, cast back, then scale: the order Qwen was trained with.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype,
    mrope_section: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, head_dim] for neox-style RoPE, computed in float32 and then cast (as HF does).

    Multimodal RoPE (Qwen2-VL's M-RoPE, `mrope_section` set): positions is [3, T], one stream each for
    time, height and width (text tokens carry the same position in all three). The head_dim/2 frequencies
    are cut into consecutive sections of mrope_section's sizes (summing to head_dim/2); section i reads its
    angles from stream i % 3. With three equal streams this is plain RoPE."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    if mrope_section is None:
        freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, head_dim/2]
    else:
        if positions.dim() != 2 or positions.shape[0] != 3 or sum(mrope_section) != head_dim // 2:
            raise ValueError("M-RoPE takes positions [3, T] and mrope_section summing to head_dim / 2")
        streams = positions.float()[:, :, None] * inv_freq  # [3, T, head_dim/2]
        freqs = torch.cat([part[i % 3] for i, part in enumerate(streams.split(list(mrope_section), dim=-1))], dim=-1)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        # Qwen3 normalises each head's q and k (over head_dim) before RoPE; Qwen2 does not.
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        # Set by fusion.fuse_projections: the [q; k; v] rows in one matrix (and their biases).
        self.qkv_weight: torch.Tensor | None = None
        self.qkv_bias: torch.Tensor | None = None

    def project(self, x: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (at `rows` only, when given), k and v (at every row: later rows attend to all of them)."""
        if self.qkv_weight is None:
            return self.q_proj(x if rows is None else x[rows]), self.k_proj(x), self.v_proj(x)
        nq = self.q_proj.out_features
        w, b = self.qkv_weight, self.qkv_bias
        if rows is None:
            return F.linear(x, w, b).split([nq, self.k_proj.out_features, self.v_proj.out_features], dim=-1)
        k, v = F.linear(x, w[nq:], None if b is None else b[nq:]).chunk(2, dim=-1)
        return F.linear(x[rows], w[:nq], None if b is None else b[:nq]), k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: Packing | None = None,
                rows: torch.Tensor | None = None, prefix: KV | None = None,
                on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden], or [len(rows), hidden] for the given rows only.

        packing=None: x is one causal sequence, every row: the textbook path below. Otherwise
        `packing.attend` does the attention (attention.py): several sequences in x, only the query rows `rows`,
        this layer's cached keys and values of tokens before x (`prefix`), `on_kv` called with this layer's
        keys and values.
        """
        T = x.shape[0]
        q, k, v = self.project(x, rows)
        Tq = q.shape[0]
        q = q.view(Tq, self.n_heads, self.head_dim)
        k = k.view(T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 1), k.transpose(0, 1)  # [heads, T, head_dim]
        v = v.view(T, self.n_kv_heads, self.head_dim).transpose(0, 1)
        if packing is None:
            # RoPE written into fresh (contiguous) tensors: SDPA's CPU flash kernel ran ~11% slower on the
            # transposed layout (attention.attention_layout says more).
            q = apply_rope(q, cos, sin, out=q.new_empty(q.shape))
            k = apply_rope(k, cos, sin, out=k.new_empty(k.shape))
            out = sdpa(q, k, v.contiguous(), is_causal=True)
        else:
            out = packing.attend(q, k, v, cos, sin, rows, prefix, on_kv)
        return self.o_proj(out.transpose(0, 1).reshape(Tq, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # set by fusion.fuse_projections: [gate; up]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: Packing | None = None,
                rows: torch.Tensor | None = None, prefix: KV | None = None,
                on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, packing, rows, prefix, on_kv)
        # In place: x is this forward's own activation (never a weight or an input), so reusing its memory
        # is safe and saves one [T, hidden] allocation per residual.
        x = x.add_(h) if rows is None else x[rows].add_(h)
        return x.add_(self.mlp(self.post_attention_layernorm(x)))


class DecoderModel(nn.Module):
    """The backbone (HF's Qwen3Model / Qwen2Model): embeddings, layers, final norm; no LM head."""

    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.config = cfg
        # An explicit, uninitialised weight: every weight comes from a checkpoint, and nn.Embedding's own
        # normal_() init on the meta device (how models are built for loading) goes through torch's Python
        # reference kernels, whose first use cost 2-4 s of a cold start here.
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.compiled_layer = None  # set by fusion.enable_compile (opt-in)
        # Qwen2-VL's multimodal RoPE sections, e.g. (16, 24, 24) (rope_cos_sin); None: plain RoPE. Set by the
        # multimodal model that owns this backbone (model/jina_m0.py), not part of QwenConfig: no text
        # checkpoint has it.
        self.mrope_section: tuple[int, ...] | None = None

    def forward(self, input_ids: torch.Tensor | None, seq_lens: list[int] | None = None, rows: torch.Tensor | None = None,
                attention: str = "segments", prefix: PrefixCache | PrefixCaches | None = None,
                on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None, *,
                inputs_embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T] -> final hidden states after `norm`, [T, hidden].

        Called with input_ids alone, one causal sequence: HF's forward. The options are attention.py's:
        seq_lens: lengths of the sequences packed in input_ids; positions restart at 0 for each and
        attention stays inside each (attention.Packing; `attention` picks how).
        rows: if given, only these rows (global indices, ascending) are returned, [len(rows), hidden].
        Attention is causal, so the last layer's attention output and MLP, and the final norm, are computed
        for those rows only; every earlier layer must still run on all rows (they feed the keys/values).
        prefix: every sequence is the cached prefix's tokens followed by its tokens in input_ids (PrefixCaches:
        one prefix per sequence).
        on_kv: called with each layer's attention keys and values, in layer order (how a PrefixCache fills).
        inputs_embeds / positions (multimodal models): the input vectors [T, hidden] instead of input_ids
        (copied: the layers add into their input in place), and the positions, [T] or, with self.mrope_section
        set, M-RoPE's [3, T]; default: 0..T-1 for each sequence. Given positions replace packing's (each
        packed sequence's own, restarting at 0); with a cached prefix they are not taken.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[0]
        device = (input_ids if inputs_embeds is None else inputs_embeds).device
        packing = None
        if seq_lens is not None or rows is not None or prefix is not None or on_kv is not None or attention != "segments":
            if positions is not None and prefix is not None:
                raise ValueError("positions cannot be given with a cached prefix (its positions are the packing's)")
            P = 0 if prefix is None else prefix.prefix_len
            packing = Packing(seq_lens or [T], device, attention, prefix_len=P)
            if packing.total != T:
                raise ValueError(f"seq_lens sum to {packing.total}, input_ids has {T} tokens")
        if positions is None:
            positions = torch.arange(T, device=device) if packing is None else packing.positions
            if self.mrope_section is not None:
                positions = positions[None].expand(3, -1)  # text only: the three streams agree
        elif positions.shape[-1] != T:
            raise ValueError(f"positions cover {positions.shape[-1]} tokens, the input has {T}")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.clone()
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype,
                                self.mrope_section)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_prefix = None if prefix is None else prefix.layer(i)
            one_sequence = packing is None or (len(packing.seq_lens) == 1 and not isinstance(layer_prefix, list))
            if self.compiled_layer is not None and i != last and on_kv is None and one_sequence:
                x = self.compiled_layer(layer, x, cos, sin, layer_prefix)  # one sequence: fusion.enable_compile
            else:
                x = layer(x, cos, sin, packing, rows if i == last else None, layer_prefix, on_kv)
        if rows is not None and not self.layers:
            x = x[rows]
        return self.norm(x)
