"""Jina Reranker V3: a Qwen3 decoder (no LM head) plus a small MLP projector.

Module attributes mirror the checkpoint's tensor names (`model.layers.{i}.self_attn.q_proj`,
`projector.0`, `projector.2`), so the official safetensors load strictly with no rename table.
The math follows transformers' `modeling_qwen3.py` operation for operation, including where it casts,
so float32 results match it to rounding and bfloat16 results stay as close as the kernels allow.

Speed (issue 5, numbers in docs/benchmarks.md): `JinaForRanking.embed_blocks` computes only what the
official forward reads (prompt cut after the query marker; last layer, final norm and projector at the
marker rows only), can skip the fixed system turn whose keys and values are cached (`PrefixCache`), and
can pack several blocks into one forward (`Packing`). Each other deviation from HF's
code says why next to it, with what it measured.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """HF's formulation, kept for reference and tests; the hot path uses `apply_rope`."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, for x [heads, T, head_dim] and cos/sin [T, head_dim], into `out`
    (a new tensor by default).

    Why not HF's expression: rotate_half builds a negated copy and a concatenation, then two more
    temporaries. Writing x*cos once and adding the two rotated halves in place with addcmul_ is the same
    math with three fewer full-size passes and parallel regions: 65 -> 19 ms per call at T=2048 (q, bf16,
    2 threads on the loaded 2-core machine); for a whole layer with 1 thread it measured neutral (+-1%).
    In float32 it agrees with HF to rounding (1 ulp).
    """
    half = x.shape[-1] // 2
    out = torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


class Packing:
    """Where the sequences of a packed forward start and end, and how attention keeps them apart.

    Several block prompts can share one forward: their tokens are concatenated ([T] in all), positions
    restart at 0 for each, and attention is causal *within* each sequence only (block-diagonal causal).
    Two ways to get that attention, with identical results:
      - "segments": one causal SDPA call per sequence on its slice (no mask in memory, SDPA's causal
        kernels skip the upper triangle). The default, on CPU and CUDA.
      - "mask": one SDPA call with an explicit block-diagonal causal boolean mask ([T, T] bools).
        A check on "segments" (tests compare them), and an option where one big call is preferable.
    Everything except attention (projections, norms, MLP) runs on all packed rows at once.

    prefix_len: every sequence starts with the same P tokens whose keys and values are cached
    (`PrefixCache`); input_ids then hold only the tokens after them, positions start at P, and attention
    runs on the "attention layout" (`self.attn`): each sequence with its P prefix rows put back in front.
    """

    def __init__(self, seq_lens: list[int], device: torch.device, attention: str = "segments", prefix_len: int = 0):
        if attention not in ("segments", "mask"):
            raise ValueError(f"unknown packed attention {attention!r}; use 'segments' or 'mask'")
        self.seq_lens = list(seq_lens)
        self.attention = attention
        self.starts = [0]
        for n in self.seq_lens[:-1]:
            self.starts.append(self.starts[-1] + n)
        self.total = sum(self.seq_lens)
        self.device = device
        self.prefix_len = prefix_len
        # positions restart for every sequence: RoPE sees each block exactly as if it ran alone
        self.positions = torch.cat([torch.arange(prefix_len, prefix_len + n, device=device) for n in self.seq_lens])
        self.seq_id = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(self.seq_lens)])
        self.attn = self if prefix_len == 0 else Packing([prefix_len + n for n in self.seq_lens], device, attention)

    def mask(self, rows: torch.Tensor | None) -> torch.Tensor:
        """[len(rows) or T, T] bool: query row i may read key j iff same sequence and j <= i."""
        q = torch.arange(self.total, device=self.device) if rows is None else rows
        k = torch.arange(self.total, device=self.device)
        return (self.seq_id[q][:, None] == self.seq_id[None, :]) & (k[None, :] <= q[:, None])

    def attention_rows(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Row indices of this packing -> the same rows in the attention layout."""
        if rows is None or self.prefix_len == 0:
            return rows
        return rows + self.prefix_len * (self.seq_id[rows] + 1)

    def attention_output(self, out: torch.Tensor) -> torch.Tensor:
        """[heads, attention-layout rows, d] -> this packing's rows (the prefix rows dropped)."""
        if self.prefix_len == 0:
            return out
        if len(self.seq_lens) == 1:
            return out[:, self.prefix_len:]
        return out[:, self.attention_rows(torch.arange(self.total, device=self.device))]


def attention_layout(x: torch.Tensor, prefix: torch.Tensor | None, cos: torch.Tensor | None, sin: torch.Tensor | None,
                     starts: list[int], seq_lens: list[int], prefix_len: int) -> torch.Tensor:
    """[heads, T, d] (usually a transposed view of a projection) -> a contiguous [heads, T + n_seq * P, d]:
    each sequence's rows, rotated on the way in when cos/sin are given, after P prefix rows (`prefix`
    [heads, P, d], or zeros: query rows nobody reads).

    Why contiguous: SDPA's CPU flash kernel ran ~11% slower on the strided layout (0.273 vs 0.244 s per call
    at T=2048, bf16, 1 thread); writing RoPE's output here costs no extra pass.
    """
    heads, _, d = x.shape
    out = x.new_empty(heads, sum(seq_lens) + len(seq_lens) * prefix_len, d)
    for i, (start, n) in enumerate(zip(starts, seq_lens)):
        at = start + i * prefix_len
        if prefix_len:
            out[:, at:at + prefix_len] = 0 if prefix is None else prefix
        src, dst = x[:, start:start + n], out[:, at + prefix_len:at + prefix_len + n]
        if cos is None:
            dst.copy_(src)
        else:
            apply_rope(src, cos[start:start + n], sin[start:start + n], out=dst)
    return out


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    # SDPA with enable_gqa on 3-D inputs falls back to the slow "math" kernel on CPU (measured: 2.5 s vs
    # 0.55 s per layer at T=2048); with a batch dimension of 1 it takes the flash kernel.
    return F.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=True, **kw)[0]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing | None,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence. q: [heads, Tq, d] for all T rows (rows=None) or for
    the given rows only (global row indices, ascending); k, v: [kv_heads, T, d]. Returns [heads, Tq, d].

    GQA through SDPA's enable_gqa instead of repeat_interleave: no [heads, T, d] copies of k and v
    (2 x 2 x T x 2048 bytes less memory per layer in bf16; time measured in docs/benchmarks.md).
    packing=None means one sequence, all rows (the shape the opt-in torch.compile path sees).
    """
    if packing is None:
        return _sdpa(q, k, v, is_causal=True)
    if packing.attention == "mask":
        return _sdpa(q, k, v, attn_mask=packing.mask(rows))
    if len(packing.seq_lens) == 1 and rows is None:
        return _sdpa(q, k, v, is_causal=True)
    out = q.new_empty(q.shape)
    for start, n in zip(packing.starts, packing.seq_lens):
        ks, vs = k[:, start:start + n], v[:, start:start + n]
        if rows is None:
            out[:, start:start + n] = _sdpa(q[:, start:start + n], ks, vs, is_causal=True)
            continue
        sel = ((rows >= start) & (rows < start + n)).nonzero().flatten()
        if sel.numel() == 0:
            continue
        # A few query rows (the markers) against the whole sequence: row at position p reads keys 0..p.
        pos = rows[sel] - start
        mask = torch.arange(n, device=q.device)[None, :] <= pos[:, None]
        out[:, sel] = _sdpa(q[:, sel], ks, vs, attn_mask=mask)
    return out


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
        self.qkv_weight: torch.Tensor | None = None  # set by fuse_projections(): [q; k; v] rows in one matrix

    def _project(self, x: torch.Tensor, rows: torch.Tensor | None):
        nq = self.n_heads * self.head_dim
        if self.qkv_weight is None:
            q = self.q_proj(x if rows is None else x[rows])
            return q, self.k_proj(x), self.v_proj(x)
        if rows is None:
            q, k, v = F.linear(x, self.qkv_weight).split([nq, self.k_proj.out_features, self.v_proj.out_features], dim=-1)
            return q, k, v
        # Only the marker rows need a query; every row still needs its key and value.
        k, v = F.linear(x, self.qkv_weight[nq:]).chunk(2, dim=-1)
        return F.linear(x[rows], self.qkv_weight[:nq]), k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: Packing | None,
                rows: torch.Tensor | None = None, prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
                on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden], or [len(rows), hidden] for the given rows only.

        packing=None: one sequence, all rows. prefix: this layer's cached (keys, values) of the tokens
        before x (see Packing). on_kv: called with this layer's attention keys and values (attention layout).
        """
        T = x.shape[0]
        q, k, v = self._project(x, rows)
        Tq = q.shape[0]
        q = self.q_norm(q.view(Tq, self.n_heads, self.head_dim)).transpose(0, 1)
        k = self.k_norm(k.view(T, self.n_kv_heads, self.head_dim)).transpose(0, 1)
        v = v.view(T, self.n_kv_heads, self.head_dim).transpose(0, 1)
        pk, pv = prefix if prefix is not None else (None, None)
        if packing is None:
            seqs = ([0], [T], 0 if pk is None else pk.shape[1])
        else:
            seqs = (packing.starts, packing.seq_lens, packing.prefix_len)
        k, v = attention_layout(k, pk, cos, sin, *seqs), attention_layout(v, pv, None, None, *seqs)
        if on_kv is not None:
            on_kv(k, v)
        if rows is None:
            out = packed_attention(attention_layout(q, None, cos, sin, *seqs), k, v, packing and packing.attn)
            if pk is not None:
                out = out[:, seqs[2]:] if packing is None else packing.attention_output(out)
        else:
            # packing is never None with rows (only the last layer of embed_blocks passes rows)
            q = apply_rope(q, cos[rows], sin[rows])
            out = packed_attention(q, k, v, packing.attn, packing.attention_rows(rows))
        return self.o_proj(out.transpose(0, 1).reshape(Tq, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_weight: torch.Tensor | None = None  # set by fuse_projections(): [gate; up]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: Packing | None,
                rows: torch.Tensor | None = None, prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
                on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, packing, rows, prefix, on_kv)
        # In place: x is this forward's own activation (never a weight or an input), so reusing its memory
        # is safe and saves one [T, hidden] allocation per residual.
        x = x.add_(h) if rows is None else x[rows].add_(h)
        return x.add_(self.mlp(self.post_attention_layernorm(x)))


class Qwen3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # An explicit, uninitialised weight: every weight comes from a checkpoint, and nn.Embedding's own
        # normal_() init on the meta device (how load_model builds the model) goes through torch's Python
        # reference kernels, whose first use cost 2-4 s of a cold start here.
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.compiled_layer = None  # set by enable_compile(): opt-in, see there

    def forward(self, input_ids: torch.Tensor, seq_lens: list[int] | None = None, rows: torch.Tensor | None = None,
                attention: str = "segments", prefix: "PrefixCache | None" = None,
                on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """input_ids [T] -> final hidden states after `norm`.

        seq_lens: lengths of the sequences packed in input_ids (default: one sequence of T tokens);
        positions restart at 0 for each and attention stays inside each (see Packing).
        rows: if given, only these rows (global indices, ascending) are returned, [len(rows), hidden].
        Attention is causal, so the last layer's attention output and MLP, and the final norm, are computed
        for those rows only; every earlier layer must still run on all rows (they feed the keys/values).
        Saves 1/num_layers of the work (3.6% for 28 layers) when only the marker rows are read.
        prefix: every sequence is the cached prefix's tokens followed by its tokens in input_ids.
        on_kv: called with each layer's attention keys and values, in layer order (how a PrefixCache fills).
        """
        P = 0 if prefix is None else len(prefix)
        packing = Packing(seq_lens or [input_ids.shape[0]], input_ids.device, attention, prefix_len=P)
        if packing.total != input_ids.shape[0]:
            raise ValueError(f"seq_lens sum to {packing.total}, input_ids has {input_ids.shape[0]} tokens")
        x = self.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(packing.positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_prefix = None if prefix is None else prefix.kv[i]
            if (self.compiled_layer is not None and i != last and len(packing.seq_lens) == 1 and on_kv is None):
                x = self.compiled_layer(layer, x, cos, sin, layer_prefix)
            else:
                x = layer(x, cos, sin, packing, rows if i == last else None, layer_prefix, on_kv)
        if rows is not None and not self.layers:
            x = x[rows]
        return self.norm(x)


class PrefixCache:
    """Keys and values, per layer, of a token prefix that every block prompt starts with.

    Every prompt begins with the same system turn (90 tokens of the Qwen3 tokenizer; `engine.prompt.PREFIX`).
    Attention is causal, so those tokens' keys and values never depend on what follows: they are kept from
    one forward (`keep`, as the on_kv callback of a forward whose first sequence starts with `ids`), and
    later forwards run only the tokens after them, with attention reading the cached rows. Saves 90 tokens
    of every block's linear layers and MLP: 4% of a 2K block, most of a small request (docs/benchmarks.md).
    """

    def __init__(self, ids: torch.Tensor):
        self.ids = ids  # [P] token ids
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: [kv_heads, P, head_dim] keys, values

    def __len__(self) -> int:
        return self.ids.shape[0]

    def starts(self, input_ids: torch.Tensor) -> bool:
        P = len(self)
        return input_ids.shape[0] > P and torch.equal(input_ids[:P], self.ids)

    def keep(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """on_kv callback: copy the first P rows (keys after k_norm and RoPE), so nothing else stays alive."""
        P = len(self)
        self.kv.append((k[:, :P].clone(), v[:, :P].clone()))


def _causal_layer(layer: DecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  prefix: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return layer(x, cos, sin, None, None, prefix)


def enable_compile(model: "JinaForRanking", cache_dir: str | None = None) -> None:
    """Opt-in: torch.compile (Inductor) of the decoder layer for one-sequence forwards, every layer but the
    last (the marker-rows layer and packed forwards stay eager).

    Why: Inductor fuses the element-wise work (norms, RoPE, SiLU, casts, residuals) into few kernels:
    `Reranker.rerank` at 2K went from 1.00x to 1.09x the reference path (1 thread, CPU time, this machine;
    docs/benchmarks.md). Why opt-in: the first compile takes 17 s for the full model here and a process
    with a warm cache still needs ~10 s to its first result, far beyond the 3 s cold-start budget. The
    compiled code is cached on disk (Inductor's FX graph cache, in cache_dir or TORCHINDUCTOR_CACHE_DIR),
    so later processes skip most of it. One graph serves all layers (their weights are inputs) and all
    lengths (dynamic=True).
    """
    import os

    if cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    model.model.compiled_layer = torch.compile(_causal_layer, dynamic=True)


def fuse_projections(model: "JinaForRanking") -> None:
    """Concatenate each layer's q/k/v and gate/up weights into one matrix, at load time.

    Why: one [T,1024]x[1024,4096] product instead of three, one [T,1024]x[1024,6144] instead of two: fewer,
    larger products and fewer calls (5-6% on the products alone at T=2048, bf16; a whole layer measured
    neutral within +-3% on this CPU; fewer kernel launches is the usual gain on a GPU, not measured here).
    Kept because it costs nothing: loading.read_safetensors reads the weights side by side, so this is a view.
    The official parameters stay where strict loading and state_dict() expect them (same names, shapes,
    values): after fusion they are *views* into the fused matrix, so nothing is stored twice. Call it after
    the weights are loaded; assigning a new Parameter to q_proj etc. later would not update the fused one.
    """
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_weight = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
        mlp.gate_up_weight = _fuse(mlp.gate_proj, mlp.up_proj)


def _fuse(*linears: nn.Linear) -> torch.Tensor:
    weights = [lin.weight.detach() for lin in linears]
    rows = sum(w.shape[0] for w in weights)
    if all(w.is_contiguous() and w.untyped_storage().data_ptr() == weights[0].untyped_storage().data_ptr()
           for w in weights) and all(b.storage_offset() == a.storage_offset() + a.numel() for a, b in zip(weights, weights[1:])):
        # Already side by side in one buffer (loading.read_safetensors placed them so): a view, no copy.
        return weights[0].as_strided((rows, weights[0].shape[1]), (weights[0].shape[1], 1))
    fused = torch.cat(weights, dim=0)
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start:start + n], requires_grad=lin.weight.requires_grad)
        start += n
    return fused


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
    def prefix_cache(self, ids: list[int] | torch.Tensor) -> PrefixCache:
        """Run the prefix tokens alone once and keep every layer's keys and values (see PrefixCache)."""
        device = self.model.embed_tokens.weight.device
        cache = PrefixCache(torch.as_tensor(ids, dtype=torch.long, device=device))
        if cache.ids.ndim != 1 or len(cache) == 0:
            raise ValueError("a prefix is a non-empty 1-D sequence of token ids")
        # rows: the last layer's keys and values are all computed, its queries and MLP only for one row
        self.model(cache.ids, rows=torch.tensor([len(cache) - 1], device=device), on_kv=cache.keep)
        return cache

    @torch.inference_mode()
    def embed(
        self, input_ids: torch.Tensor, doc_marker_id: int, query_marker_id: int, prefix: PrefixCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block prompt [T] -> (query vector [512], document vectors [n, 512], cosines [n]).

        All three stay in the model dtype, as in the official forward: the cosines feed the block weight.
        """
        return self.embed_blocks([input_ids], doc_marker_id, query_marker_id, prefix=prefix)[0]

    @torch.inference_mode()
    def embed_blocks(
        self, blocks: list[torch.Tensor], doc_marker_id: int, query_marker_id: int, attention: str = "segments",
        prefix: PrefixCache | None = None, on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Several block prompts in ONE packed forward -> per block (query [512], docs [n, 512], cosines [n]).

        Only what the official forward reads is computed (attention is causal, so nothing here changes the
        hidden states that are read):
          - each prompt is cut after its query marker (the chat suffix after it cannot influence the
            marker rows);
          - the last layer's attention output and MLP, and the final norm, run only at the marker rows;
          - with `prefix`, the cached prefix tokens are not run again (used only if every block starts
            with them; otherwise the blocks run whole).
        on_kv: passed to the backbone (each layer's keys and values, attention layout).
        """
        if prefix is not None and (not all(prefix.starts(b) for b in blocks)
                                   or bool(torch.isin(prefix.ids, torch.tensor([doc_marker_id, query_marker_id],
                                                                                device=prefix.ids.device)).any())):
            prefix = None  # run the prompts whole; a prefix holding a marker would hide its row
        skip = 0 if prefix is None else len(prefix)
        ids, seq_lens, rows, spans = [], [], [], []
        offset = 0
        for input_ids in blocks:
            is_query = input_ids == query_marker_id
            n_query = int(is_query.sum())
            if n_query != 1:
                raise RuntimeError(f"expected exactly one query marker in a block, found {n_query}. This is a bug.")
            end = int(is_query.nonzero()[0, 0]) + 1
            kept = input_ids[skip:end]
            doc_rows = (kept == doc_marker_id).nonzero().flatten()
            if len(doc_rows) != int((input_ids == doc_marker_id).sum()):
                raise RuntimeError("a document marker follows the query marker in a block prompt. This is a bug.")
            ids.append(kept)
            seq_lens.append(end - skip)
            # Marker rows in prompt order (docs precede the query marker in the template), then the query.
            rows.append(doc_rows + offset)
            rows.append(torch.tensor([offset + end - skip - 1], device=input_ids.device))
            spans.append(len(doc_rows))
            offset += end - skip
        packed_ids = torch.cat(ids) if len(ids) > 1 else ids[0]
        row_index = torch.cat(rows)  # ascending: blocks in order, each block's markers in prompt order
        hidden = self.model(packed_ids, seq_lens, row_index, attention, prefix, on_kv)  # [n_markers, hidden]
        results, start = [], 0
        for n_docs in spans:
            doc_hidden, query_hidden = hidden[start:start + n_docs], hidden[start + n_docs:start + n_docs + 1]
            start += n_docs + 1
            d = self.projector(doc_hidden)
            q = self.projector(query_hidden)
            scores = F.cosine_similarity(d, q.expand_as(d), dim=-1)
            results.append((q[0], d, scores))
        return results
