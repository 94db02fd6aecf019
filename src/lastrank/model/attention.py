"""Attention beside the decoder math (model/decoder.py): RoPE, SDPA, and the ways a forward's attention goes
beyond one whole causal sequence.

  - `apply_rope`, `sdpa`: RoPE written once into its output, grouped-query SDPA on its fast CPU kernel;
  - `Packing`: several sequences in one forward (positions restart, attention stays inside each), a cached
    prefix every sequence starts with, and query rows restricted to the few a head reads;
  - `PrefixCache`: keys and values, per layer, of a prefix shared by many inputs, computed once;
    `PrefixCaches`: one per packed sequence, so sequences of several requests (several prefixes) share a
    forward.
decoder.py's layers call into this file and nothing here imports a layer, so the two no longer import each
other; fusion.py (fused projections, compile) builds on both. Tested equal to the plain forward in float32
(tests/model/test_fast_path.py, tests/families/test_jina_v3_packing.py, tests/families/test_jina_v3_prefix.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values), [kv_heads, T, head_dim] each


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's formulation: the vision encoder's RoPE (qwen2_vl.py) and the tests' reference; the decoder's
    forward uses `apply_rope`."""
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


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """Causal or masked attention of q [heads, Tq, d] over k, v [kv_heads, Tk, d] (grouped-query).

    GQA through SDPA's enable_gqa instead of repeat_interleave: no [heads, T, d] copies of k and v.
    With a batch dimension of 1: SDPA with enable_gqa on 3-D inputs falls back to the slow "math" kernel on
    CPU (measured: 2.5 s vs 0.55 s per layer at T=2048); with the batch dimension it takes the flash kernel.
    """
    return F.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=True, **kw)[0]


class Packing:
    """Where the sequences of a packed forward start and end, and how attention keeps them apart.

    Several sequences can share one forward: their tokens are concatenated ([T] in all), positions
    restart at 0 for each, and attention is causal *within* each sequence only (block-diagonal causal).
    Two ways to get that attention, with identical results:
      - "segments": one causal SDPA call per sequence on its slice (no mask in memory, SDPA's causal
        kernels skip the upper triangle). The default, on CPU and CUDA.
      - "mask": one SDPA call with an explicit block-diagonal causal boolean mask ([T, T] bools).
        A check on "segments" (tests compare them), and an option where one big call is preferable.
    Everything except attention (projections, norms, MLP) runs on all packed rows at once.

    prefix_len: every sequence starts with P tokens whose keys and values are cached (`PrefixCache`; one P
    for all, or a list: P_i for sequence i, `PrefixCaches`); input_ids then hold only the tokens after them,
    positions start at P_i, and attention runs on the "attention layout" (`self.attn`): each sequence with
    its P_i prefix rows put back in front.
    """

    def __init__(self, seq_lens: list[int], device: torch.device, attention: str = "segments",
                 prefix_len: int | list[int] = 0):
        if attention not in ("segments", "mask"):
            raise ValueError(f"unknown packed attention {attention!r}; use 'segments' or 'mask'")
        self.seq_lens = list(seq_lens)
        self.attention = attention
        self.starts = [0]
        for n in self.seq_lens[:-1]:
            self.starts.append(self.starts[-1] + n)
        self.total = sum(self.seq_lens)
        self.device = device
        self.prefix_lens = list(prefix_len) if isinstance(prefix_len, (list, tuple)) else [prefix_len] * len(self.seq_lens)
        if len(self.prefix_lens) != len(self.seq_lens):
            raise ValueError(f"{len(self.prefix_lens)} prefix lengths for {len(self.seq_lens)} sequences")
        self.has_prefix = any(self.prefix_lens)
        # positions restart for every sequence: RoPE sees each sequence exactly as if it ran alone
        self.positions = torch.cat([torch.arange(P, P + n, device=device) for P, n in zip(self.prefix_lens, self.seq_lens)])
        self.seq_id = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(self.seq_lens)])
        self.attn = self
        if self.has_prefix:
            self.attn = Packing([P + n for P, n in zip(self.prefix_lens, self.seq_lens)], device, attention)
            # attention-layout row of a row of sequence i: + the prefix rows of sequences 0..i
            self.row_shift = torch.tensor(self.prefix_lens, device=device).cumsum(0)

    def mask(self, rows: torch.Tensor | None) -> torch.Tensor:
        """[len(rows) or T, T] bool: query row i may read key j iff same sequence and j <= i."""
        q = torch.arange(self.total, device=self.device) if rows is None else rows
        k = torch.arange(self.total, device=self.device)
        return (self.seq_id[q][:, None] == self.seq_id[None, :]) & (k[None, :] <= q[:, None])

    def attention_rows(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Row indices of this packing -> the same rows in the attention layout."""
        if rows is None or not self.has_prefix:
            return rows
        return rows + self.row_shift[self.seq_id[rows]]

    def attention_output(self, out: torch.Tensor) -> torch.Tensor:
        """[heads, attention-layout rows, d] -> this packing's rows (the prefix rows dropped)."""
        if not self.has_prefix:
            return out
        if len(self.seq_lens) == 1:
            return out[:, self.prefix_lens[0]:]
        return out[:, self.attention_rows(torch.arange(self.total, device=self.device))]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rows: torch.Tensor | None = None, prefix: KV | list[KV | None] | None = None,
               on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """decoder.Attention's seam. q [heads, Tq, d] (Tq = len(rows) or T), k, v [kv_heads, T, d], after the
        q/k norms, before RoPE -> attention output [heads, Tq, d]. prefix: this layer's cached keys and values,
        shared by every sequence or one per sequence (None where a sequence has no prefix)."""
        return _attend(q, k, v, cos, sin, self, rows, prefix, on_kv)


class _OneSequence:
    """The `packing` of a one-sequence forward whose layer is compiled (`enable_compile`): it holds nothing
    that depends on the length, so one dynamic graph serves every length."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rows: None = None, prefix: KV | None = None, on_kv: None = None) -> torch.Tensor:
        return _attend(q, k, v, cos, sin, None, None, prefix, None)


ONE_SEQUENCE = _OneSequence()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            packing: Packing | None, rows: torch.Tensor | None, prefix: KV | list[KV | None] | None,
            on_kv: Callable[[torch.Tensor, torch.Tensor], None] | None) -> torch.Tensor:
    """packing=None: one sequence, every row (with or without a shared prefix)."""
    T = k.shape[1]
    if prefix is None:
        pk = pv = None
    elif isinstance(prefix, list):  # one per sequence
        pk, pv = [None if p is None else p[0] for p in prefix], [None if p is None else p[1] for p in prefix]
    else:
        pk, pv = prefix
    if packing is None:
        seqs = ([0], [T], [0 if pk is None else pk.shape[1]])
    else:
        seqs = (packing.starts, packing.seq_lens, packing.prefix_lens)
    k, v = attention_layout(k, pk, cos, sin, *seqs), attention_layout(v, pv, None, None, *seqs)
    if on_kv is not None:
        on_kv(k, v)
    if rows is None:
        out = packed_attention(attention_layout(q, None, cos, sin, *seqs), k, v, packing and packing.attn)
        if pk is not None:
            out = out[:, seqs[2][0]:] if packing is None else packing.attention_output(out)
        return out
    # packing is never None with rows (the backbone makes one whenever rows are asked for)
    q = apply_rope(q, cos[rows], sin[rows])
    return packed_attention(q, k, v, packing.attn, packing.attention_rows(rows))


def attention_layout(x: torch.Tensor, prefix: torch.Tensor | list[torch.Tensor | None] | None,
                     cos: torch.Tensor | None, sin: torch.Tensor | None,
                     starts: list[int], seq_lens: list[int], prefix_lens: list[int]) -> torch.Tensor:
    """[heads, T, d] (usually a transposed view of a projection) -> a contiguous [heads, T + sum(P_i), d]:
    each sequence's rows, rotated on the way in when cos/sin are given, after its P_i prefix rows (`prefix`
    [heads, P, d] for all, a list with one per sequence, or None: zeros, query rows nobody reads).

    Why contiguous: SDPA's CPU flash kernel ran ~11% slower on the strided layout (0.273 vs 0.244 s per call
    at T=2048, bf16, 1 thread); writing RoPE's output here costs no extra pass.
    """
    heads, _, d = x.shape
    out = x.new_empty(heads, sum(seq_lens) + sum(prefix_lens), d)
    at = 0
    for i, (start, n, P) in enumerate(zip(starts, seq_lens, prefix_lens)):
        if P:
            p = prefix[i] if isinstance(prefix, list) else prefix
            out[:, at:at + P] = 0 if p is None else p
        src, dst = x[:, start:start + n], out[:, at + P:at + P + n]
        if cos is None:
            dst.copy_(src)
        else:
            apply_rope(src, cos[start:start + n], sin[start:start + n], out=dst)
        at += P + n
    return out


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing | None,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence. q: [heads, Tq, d] for all T rows (rows=None) or for
    the given rows only (global row indices, ascending); k, v: [kv_heads, T, d]. Returns [heads, Tq, d].

    packing=None means one sequence, all rows.
    """
    if packing is None:
        return sdpa(q, k, v, is_causal=True)
    if packing.attention == "mask":
        return sdpa(q, k, v, attn_mask=packing.mask(rows))
    if len(packing.seq_lens) == 1 and rows is None:
        return sdpa(q, k, v, is_causal=True)
    out = q.new_empty(q.shape)
    for start, n in zip(packing.starts, packing.seq_lens):
        ks, vs = k[:, start:start + n], v[:, start:start + n]
        if rows is None:
            out[:, start:start + n] = sdpa(q[:, start:start + n], ks, vs, is_causal=True)
            continue
        sel = ((rows >= start) & (rows < start + n)).nonzero().flatten()
        if sel.numel() == 0:
            continue
        # A few query rows (the markers) against the whole sequence: row at position p reads keys 0..p.
        pos = rows[sel] - start
        mask = torch.arange(n, device=q.device)[None, :] <= pos[:, None]
        out[:, sel] = sdpa(q[:, sel], ks, vs, attn_mask=mask)
    return out


class PrefixCache:
    """Keys and values, per layer, of a token prefix that every input starts with.

    Attention is causal, so those tokens' keys and values never depend on what follows: they are kept from
    one forward (`keep`, as the on_kv callback of a forward whose first sequence starts with `ids`), and
    later forwards run only the tokens after them, with attention reading the cached rows. For Jina V3 the
    prefix is the 90-token system turn of every block prompt (`families.jina_v3.prompt.PREFIX`): 4% of a 2K block,
    most of a small request (docs/benchmarks.md).
    """

    def __init__(self, ids: torch.Tensor):
        self.ids = ids  # [P] token ids
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: [kv_heads, P, head_dim] keys, values

    def __len__(self) -> int:
        return self.ids.shape[0]

    def starts(self, input_ids: torch.Tensor) -> bool:
        P = len(self)
        return input_ids.shape[0] > P and torch.equal(input_ids[:P], self.ids)

    def keep(self, k: torch.Tensor, v: torch.Tensor, start: int = 0) -> None:
        """on_kv callback: copy P rows from `start` (keys after k_norm and RoPE), so nothing else stays alive."""
        P = len(self)
        self.kv.append((k[:, start:start + P].clone(), v[:, start:start + P].clone()))

    # What the backbone asks of a prefix (PrefixCaches answers the same for one prefix per sequence).
    @property
    def prefix_len(self) -> int:
        return len(self)

    def layer(self, i: int) -> KV:
        return self.kv[i]


class PrefixCaches:
    """One PrefixCache (or None: no prefix) per packed sequence: sequences of several requests, each reading
    its own request's prefix, in one forward. `fill` computes several prefixes in one packed forward."""

    def __init__(self, caches: list[PrefixCache | None]):
        self.caches = caches

    @property
    def prefix_len(self) -> list[int]:
        return [0 if c is None else len(c) for c in self.caches]

    def layer(self, i: int) -> list[KV | None]:
        return [None if c is None else c.kv[i] for c in self.caches]

    @staticmethod
    def fill(backbone: nn.Module, caches: list[PrefixCache]) -> None:
        """Run every cache's ids as one packed forward and keep each one's keys and values (the last layer's
        queries and MLP only at one row per prefix: nothing reads them)."""
        lens = [len(c) for c in caches]
        starts = [sum(lens[:i]) for i in range(len(lens))]
        ids = torch.cat([c.ids for c in caches])
        rows = torch.tensor([s + n - 1 for s, n in zip(starts, lens)], device=ids.device)

        def keep(k: torch.Tensor, v: torch.Tensor) -> None:
            for c, start in zip(caches, starts):
                c.keep(k, v, start)

        backbone(ids, lens, rows, on_kv=keep)


