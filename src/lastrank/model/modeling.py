"""Jina Reranker V3: a Qwen3 decoder (no LM head) plus a small MLP projector.

Module attributes mirror the checkpoint's tensor names (`model.layers.{i}.self_attn.q_proj`,
`projector.0`, `projector.2`), so the official safetensors load strictly with no rename table.
The math follows transformers' `modeling_qwen3.py` operation for operation, including where it casts,
so float32 results match it to rounding and bfloat16 results stay as close as the kernels allow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lastrank.model.config import PROJECTOR_OUT_DIM, ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, cast back, then scale: the order Qwen3 was trained with.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [T, head_dim] for neox-style RoPE, computed in float32 and then cast (as HF does)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [heads, T, head_dim]; cos/sin: [T, head_dim]
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        # Qwen3 normalises each head's q and k (over head_dim) before RoPE; Llama/Qwen2 do not.
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]  # x: [T, hidden]
        q = self.q_norm(self.q_proj(x).view(T, self.n_heads, self.head_dim)).transpose(0, 1)
        k = self.k_norm(self.k_proj(x).view(T, self.n_kv_heads, self.head_dim)).transpose(0, 1)
        v = self.v_proj(x).view(T, self.n_kv_heads, self.head_dim).transpose(0, 1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=0)  # GQA: query head i reads kv head i // groups
        v = v.repeat_interleave(groups, dim=0)
        out = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True)
        return self.o_proj(out[0].transpose(0, 1).reshape(T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> final hidden states after `norm`, [T, hidden]. One sequence, positions 0..T-1."""
        x = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[0], device=input_ids.device)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class JinaForRanking(nn.Module):
    """Backbone + projector. `embed()` is the one call the engine makes."""

    def __init__(self, cfg: ModelConfig, projector_hidden: int | None = None, projector_out: int = PROJECTOR_OUT_DIM):
        super().__init__()
        self.config = cfg
        projector_hidden = projector_hidden or cfg.hidden_size // 2
        self.model = Qwen3Model(cfg)
        self.projector = nn.Sequential(
            nn.Linear(cfg.hidden_size, projector_hidden, bias=False),
            nn.ReLU(),
            nn.Linear(projector_hidden, projector_out, bias=False),
        )

    @torch.inference_mode()
    def embed(
        self, input_ids: torch.Tensor, doc_marker_id: int, query_marker_id: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block prompt [T] -> (query vector [512], document vectors [n, 512], cosines [n]).

        All three stay in the model dtype, as in the official forward: the cosines feed the block weight.
        """
        hidden = self.model(input_ids)  # [T, hidden]
        doc_hidden = hidden[input_ids == doc_marker_id]  # [n, hidden], in prompt order
        query_hidden = hidden[input_ids == query_marker_id]  # [1, hidden]
        if query_hidden.shape[0] != 1:
            raise RuntimeError(f"expected exactly one query marker in a block, found {query_hidden.shape[0]}. This is a bug.")
        d = self.projector(doc_hidden)
        q = self.projector(query_hidden)
        scores = F.cosine_similarity(d, q.expand_as(d), dim=-1)
        return q[0], d, scores
