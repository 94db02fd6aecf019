"""BERT-style post-norm encoder: the backbone of BERT sentence-transformers models (all-MiniLM-L6-v2) and,
with XLMRConfig's switches, of the XLM-R cross-encoders (model/xlmr.py adds only XLM-R's config, head and
checkpoint layouts).

Module attributes mirror the checkpoint's tensor names as transformers' `BertModel` saves them
(`embeddings.word_embeddings`, `encoder.layer.{i}.attention.self.query`, `...attention.output.LayerNorm`,
`...intermediate.dense`, `...output.dense`), so model.safetensors loads strictly with no rename table
(`load_bert`). The math follows transformers' `modeling_bert.py` (post-LayerNorm residual blocks, absolute
learned positions, bidirectional attention); XLM-R (`modeling_xlm_roberta.py`) is the same network with
other position ids (`BertConfig.position_rule`).

No padding waste: a batch of sequences runs as one packed forward. Their tokens are concatenated ([T] rows
in all), positions restart for each, every projection / LayerNorm / MLP runs on all T rows at once, and
attention is confined to each sequence (`EncoderPacking`: one SDPA call per group of equal-length sequences). In
float32 this equals the padded batch with an attention mask to rounding (tests/model/test_bert.py,
tests/model/test_xlmr.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from typing import ClassVar
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.weights import read_safetensors, strict_load

# transformers' ACT2FN names this file implements. "gelu" is the exact (erf) GELU, as in BERT's config.
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

# ACTIVATIONS that oneDNN applies inside the product (`linear`): name -> its GELU algorithm.
FUSED_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu_pytorch_tanh": "tanh"}


@functools.cache
def _onednn_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU. Without AVX-512 (AMD Zen 3, say) `_linear_pointwise`
    has no bfloat16 primitive and raises, while F.linear still runs (slowly), so the fused call is used only
    where oneDNN says it can."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn_linear(module: nn.Module, x: torch.Tensor) -> bool:
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and type(module) is nn.Linear
            and _onednn_bf16())


def writes_into(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether `linear(module, x, out=buf)` writes its product into buf: an nn.Linear with a bias on a 2-D input
    that F.linear would run (not oneDNN's bfloat16 call, not an int8 layer), without autograd (out= has none)."""
    return (type(module) is nn.Linear and module.bias is not None and x.dim() == 2
            and x.dtype == module.weight.dtype and not _onednn_linear(module, x) and not torch.is_grad_enabled())


def linear(module: nn.Module, x: torch.Tensor, act: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """module(x), then ACTIVATIONS[act] when given. bfloat16 on the CPU: one oneDNN call
    (`mkldnn._linear_pointwise`) that adds the bias (and applies the GELU) on the float32 accumulator,
    instead of F.linear, whose CPU bfloat16 path first copies the bias into the output, and a separate GELU
    pass (docs/benchmarks.md, "Fewer kernels"). The product is the same; the fused GELU rounds once instead of
    twice. float32 and every other device keep F.linear (the reference path, unchanged); so do the int8
    layers (model/int8.py), which are not nn.Linear. out: a buffer of x's dtype for the product where
    `writes_into(module, x)` (`EncoderPacking.buffer`): the same addmm call F.linear makes, so the same bits."""
    if _onednn_linear(module, x):
        flat = x.reshape(-1, x.shape[-1])
        if act in FUSED_ACTIVATIONS:
            out = torch.ops.mkldnn._linear_pointwise(flat, module.weight, module.bias, "gelu", [],
                                                     FUSED_ACTIVATIONS[act])
            return out.reshape(*x.shape[:-1], out.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, module.weight, module.bias, "none", [], "")
        out = out.reshape(*x.shape[:-1], out.shape[-1])
    elif out is not None and writes_into(module, x):
        out = torch.addmm(module.bias, x, module.weight.t(), out=out)
    else:
        out = module(x)
    return ACTIVATIONS[act](out) if act is not None else out


def activate_(x: torch.Tensor, act: str) -> torch.Tensor:
    """ACTIVATIONS[act] written over x (a reused buffer, `BertIntermediate`): the same kernel, no new tensor."""
    return x.relu_() if act == "relu" else torch.ops.aten.gelu_(x, approximate=FUSED_ACTIVATIONS[act])


# Tensors a BERT checkpoint may hold that the encoder never reads: the position-id buffer older transformers
# saved (int64, always arange), and BertModel's pooler (tanh over [CLS]), which sentence-transformers' Pooling
# module does not use. Everything else must match exactly.
UNUSED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


@dataclass
class BertConfig:
    """The fields of config.json the math needs, in config.json's spelling, and the two things an encoder of
    this architecture does differently (class switches, not config.json fields; XLMRConfig sets both):
      - position_rule "bert": positions 0.. per sequence; "roberta": transformers'
        create_position_ids_from_input_ids (`EncoderPacking.positions`);
      - fused_qkv: q/k/v as one Linear `attention.self.qkv` (rows [query; key; value]) instead of three.
        One [T, h] x [h, 3h] product instead of three; BERT keeps three so that its module names are exactly
        the checkpoint's and it loads with no name map.
    """

    position_rule: ClassVar[str] = "bert"
    fused_qkv: ClassVar[bool] = False

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"unsupported position_embedding_type {self.position_embedding_type!r} (only 'absolute')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table holds (XLM-R's positions run from pad_token_id + 1)."""
        if self.position_rule == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and v is not None})

    @classmethod
    def from_file(cls, path: str | Path) -> "BertConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_hf_dict(self) -> dict:
        """config.json as transformers writes it for a BertModel."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(architectures=["BertModel"], model_type="bert", attention_probs_dropout_prob=0.1,
                 hidden_dropout_prob=0.1, initializer_range=0.02)
        return d


class EncoderPacking:
    """Where each sequence sits in the packed token axis, and the (bidirectional) attention confined to each;
    the decoders' causal packing is attention.Packing.

    Sequences of equal length are attended together in one batched SDPA call (no padding, no [T, T] mask, no
    work on pairs of different sequences); a group is cut so one call's score matrix stays under `max_scores`
    elements. (Padding the batch instead would spend the projections and MLP on pad rows; for a rerank request
    whose documents range from 20 to 250 tokens that is most of the compute.)
    """

    def __init__(self, lengths: list[int], device: torch.device, num_heads: int, max_scores: int = 1 << 26):
        if not lengths or min(lengths) < 1:
            raise ValueError(f"every packed sequence needs at least one token, got lengths {lengths}")
        self.lengths = list(lengths)
        starts, at = [], 0
        for n in self.lengths:
            starts.append(at)
            at += n
        self.total = at
        self.starts = torch.tensor(starts, dtype=torch.long, device=device)  # first row of each sequence
        self._buffers: dict[str, torch.Tensor] = {}
        by_length: dict[int, list[int]] = {}
        for s, n in zip(starts, self.lengths):
            by_length.setdefault(n, []).append(s)
        # (n sequences, length, their rows): a slice where the n sequences lie side by side (callers that sort
        # by length, like the bi-encoder, get only slices: views, no gather), else the rows [n * length]
        self.groups: list[tuple[int, int, slice | torch.Tensor]] = []
        for n, group_starts in sorted(by_length.items()):
            per_call = max(1, max_scores // max(1, num_heads * n * n))
            for i in range(0, len(group_starts), per_call):
                chunk = group_starts[i:i + per_call]
                if chunk[-1] - chunk[0] == (len(chunk) - 1) * n:
                    rows = slice(chunk[0], chunk[0] + len(chunk) * n)
                else:
                    first = torch.tensor(chunk, dtype=torch.long, device=device)
                    rows = (first[:, None] + torch.arange(n, device=device)[None, :]).reshape(-1)
                self.groups.append((len(chunk), n, rows))

    def buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor that every layer of this forward reuses for `name` (one layer's q/k/v or
        attention output is dead once the next layer writes its own). Why: a fresh tensor this large is a fresh
        mmap whose pages fault in on their first write; with the bge-reranker-v2-m3 shape (3.4K tokens) that
        was ~15-21K page faults per layer, and 20 ms for one [3428, 3072] float32 tensor, on AMD Zen 3
        (docs/benchmarks.md, "XLM-R cross-encoder (bge-reranker-v2-m3 shape) in float32 on AMD Zen 3")."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = like.new_empty(shape)
        return buf

    def attention(self, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        """qkv [T, 3 * hidden] (rows [q; k; v] per token) -> context [T, hidden], each sequence on its own."""
        q, k, v = qkv.chunk(3, dim=1)
        return self.attend(q, k, v, num_heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        """q, k, v [T, hidden] (three projections, or views of one fused qkv) -> context [T, hidden]."""
        T, hidden = q.shape
        head_dim = hidden // num_heads
        out = self.buffer("context", (T, num_heads, head_dim), q) if len(self.groups) > 1 else None
        for n, length, rows in self.groups:
            def split(t: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> the group's [n, heads, length, head_dim]
                t = t[rows] if isinstance(rows, slice) else t.index_select(0, rows)
                return t.reshape(n, length, num_heads, head_dim).transpose(1, 2)

            ctx = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2)
            if len(self.groups) == 1:  # one group of every row in order (one sequence, or all of one length)
                return ctx.reshape(T, hidden)
            if isinstance(rows, slice):
                out[rows].view(n, length, num_heads, head_dim).copy_(ctx)
            else:
                out.index_copy_(0, rows, ctx.reshape(n * length, num_heads, head_dim))
        return out.view(T, hidden)

    def positions(self, input_ids: torch.Tensor, rule: str, padding_idx: int) -> torch.Tensor:
        """Position id of every packed row, restarting for each sequence (each sees its position embeddings
        exactly as if it ran alone).
          - "bert": 0, 1, 2, ... per sequence;
          - "roberta": transformers' create_position_ids_from_input_ids per sequence: padding_idx + running
            count of non-pad tokens, and padding_idx itself at a pad token (a `<pad>` typed inside a text)."""
        lengths = torch.tensor(self.lengths, device=input_ids.device)
        if rule == "bert":
            return torch.arange(self.total, device=input_ids.device) - torch.repeat_interleave(self.starts, lengths)
        mask = (input_ids != padding_idx).long()
        count = mask.cumsum(0)
        before = torch.repeat_interleave(count[self.starts] - mask[self.starts], lengths)
        return (count - before) * mask + padding_idx


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        # Explicit, uninitialised weights (every weight comes from the checkpoint): nn.Embedding's own normal_()
        # init on the meta device, where load_bert builds the model, imports torch._dynamo (1.8 s of CPU, most
        # of MiniLM's cold start; decoder.py has the same note).
        empty = lambda rows: torch.empty(rows, cfg.hidden_size)  # noqa: E731
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id,
                                            _weight=empty(cfg.vocab_size))
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                                _weight=empty(cfg.max_position_embeddings))
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size,
                                                  _weight=empty(cfg.type_vocab_size))
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        # transformers' order: word + token type + position
        if token_type_ids is None:
            # single-segment input (sentence-transformers encode calls; XLM-R tokenizers return no
            # token_type_ids): every row is type 0
            x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        else:
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(positions))


class BertSelfAttention(nn.Module):
    """q, k, v as the checkpoint has them: three Linears (`query`, `key`, `value`), or with
    `cfg.fused_qkv` one Linear `qkv` whose rows are [query; key; value] (Jina's flash layout stores them so;
    model/xlmr.py concatenates the transformers layout's three at load)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.fused = cfg.fused_qkv
        if self.fused:
            self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        else:
            self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def fuse_qkv(self) -> None:
        """query, key and value as one Linear `qkv` (rows [query; key; value]), as `cfg.fused_qkv` has them:
        one product instead of three. For the int8 path (model/int8.py: quantize_linears), where it is the same
        numbers (per-channel weights, and the three would find the same per-row activation scales) for one
        pass over the activations instead of three; float32 keeps the checkpoint's three modules."""
        if self.fused:
            return
        parts = (self.query, self.key, self.value)
        self.qkv = nn.Linear(parts[0].in_features, 3 * parts[0].out_features, device=parts[0].weight.device,
                             dtype=parts[0].weight.dtype)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([p.weight for p in parts]))
            self.qkv.bias.copy_(torch.cat([p.bias for p in parts]))
        del self.query, self.key, self.value
        self.fused = True

    def forward(self, x: torch.Tensor, packing: EncoderPacking) -> torch.Tensor:
        if self.fused:
            into = packing.buffer("qkv", (x.shape[0], self.qkv.out_features), x) if writes_into(self.qkv, x) else None
            return packing.attention(linear(self.qkv, x, out=into), self.num_heads)
        return packing.attend(linear(self.query, x), linear(self.key, x), linear(self.value, x), self.num_heads)


class BertOutput(nn.Module):
    """dense, residual, LayerNorm: both `attention.output` (in_features = hidden; Jina: mixer.out_proj,
    norm1) and the layer's `output` (in_features = intermediate; Jina: mlp.fc2, norm2)."""

    def __init__(self, cfg: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """LayerNorm(dense(h) + residual) (post-norm: normalised after the residual), into out when given (a
        buffer of h's rows, or rows of the layer's output). The product runs on all of h's rows at once (into out
        where `writes_into`), the residual add and LayerNorm ROW_CHUNK rows at a time (`BertLayer.forward`)."""
        y = linear(self.dense, h, out=out)
        out = y if out is None else out
        for r in range(0, y.shape[0], ROW_CHUNK):
            rows = slice(r, r + ROW_CHUNK)
            out[rows] = self.LayerNorm(y[rows] + residual[rows])
        return out


class BertAttention(nn.Module):
    """The checkpoint's `attention.self` and `attention.output`; BertLayer calls them (output(self(x), x)),
    the row-wise output one block of rows at a time."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)  # "self" is the checkpoint's name (attention.self.query, ...)
        self.output = BertOutput(cfg, cfg.hidden_size)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)  # Jina: mlp.fc1
        self.hidden_act = cfg.hidden_act

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """act(dense(x)); with out (a reused [rows, intermediate] buffer) where the product `writes_into` it, the
        activation runs over it in place, ROW_CHUNK rows at a time. Elsewhere (bfloat16 on oneDNN, which fuses
        the GELU into the product; int8) a new tensor."""
        if out is None or not writes_into(self.dense, x):
            return linear(self.dense, x, self.hidden_act)
        y = linear(self.dense, x, out=out)
        for r in range(0, y.shape[0], ROW_CHUNK):
            activate_(y[r:r + ROW_CHUNK], self.hidden_act)
        return y


# Rows per pass of the row-wise half of a layer (`BertLayer.forward`). Why: on a packed forward of 16K
# tokens, MiniLM's [T, 1536] intermediate is 100 MB, so the bias copy, GELU and residual adds each stream it
# through memory; 512 rows (3 MB) stay in cache. Real MiniLM, float32, 1 thread, AMD Zen 3: 1.185x for the
# whole rerank (docs/benchmarks.md, "float32 on an AVX2-only CPU"). Every op after attention is row-wise, so
# the result is the same rows computed in another order (bit for bit on this CPU's float32 GEMM).
ROW_CHUNK = 512
# Rows per product (attention output, FFN in, FFN out) where it writes into a reused buffer (float32); the
# activation, residual add and LayerNorm over its output still run ROW_CHUNK rows at a time. Why: a product on
# 512 rows re-reads (and MKL re-packs) its whole weight every 512 rows; in a bge-reranker-v2-m3-shaped rerank
# (16 MB FFN weights) the 512-row products ran at 82-87 GFLOP/s against transformers' 90 on the whole batch
# (torch.profiler, float32, AMD Zen 3). 2,048-row products: whole rerank 1.02-1.04x faster on bge's uniform
# and TREC requests and on MiniLM's, level on bge's mixed lengths, same scores bit for bit
# (docs/benchmarks.md, "Products on 2,048 rows").
PRODUCT_ROWS = 2048


class BertLayer(nn.Module):
    """Post-norm transformer layer (BERT's, XLM-R's, Jina's Block(prenorm=False))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, packing: EncoderPacking) -> torch.Tensor:
        context = self.attention.self(x, packing)  # the only step that mixes rows
        # PRODUCT_ROWS rows at a time where the products write into buffers (float32): the attention output and
        # intermediate go into buffers every block and layer reuses (a new 32 MB tensor per block would fault
        # its pages in, EncoderPacking.buffer), and the layer's output over x: a block's rows of x are read (the
        # residual) before they are overwritten, and no other block reads them. bfloat16 (oneDNN) and int8 keep
        # ROW_CHUNK-row products: larger ones were measured for float32 only.
        step = PRODUCT_ROWS if writes_into(self.intermediate.dense, x) else ROW_CHUNK
        rows = min(step, x.shape[0])
        attention_output = packing.buffer("attention_output", (rows, x.shape[1]), x)
        intermediate = packing.buffer("intermediate", (rows, self.intermediate.dense.out_features), x)
        for r in range(0, x.shape[0], step):
            block = slice(r, r + step)
            n = x[block].shape[0]
            h = self.attention.output(context[block], x[block], out=attention_output[:n])
            self.output(self.intermediate(h, out=intermediate[:n]), h, out=x[block])
        return x


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertModel(nn.Module):
    """Token states of packed sequences: forward(input_ids [T], seq_lens) -> [T, hidden]. Also XLM-R's
    encoder (`roberta.` in model/xlmr.py), with that config's position rule and fused q/k/v."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, seq_lens: list[int] | None = None,
                token_type_ids: torch.Tensor | None = None, packing: EncoderPacking | None = None) -> torch.Tensor:
        """packing: the EncoderPacking of seq_lens when the caller already made one (it reads its `starts`)."""
        cfg = self.config
        if packing is None:
            packing = EncoderPacking(seq_lens if seq_lens is not None else [input_ids.shape[0]], input_ids.device,
                              cfg.num_attention_heads)
        if packing.total != input_ids.shape[0]:
            raise ValueError(f"seq_lens add up to {packing.total} but input_ids has {input_ids.shape[0]} tokens")
        if max(packing.lengths) > cfg.max_tokens:
            raise ValueError(f"a sequence of {max(packing.lengths)} tokens exceeds the {cfg.max_tokens} that "
                             f"max_position_embeddings ({cfg.max_position_embeddings}) allows")
        positions = packing.positions(input_ids, cfg.position_rule, cfg.pad_token_id)
        x = self.embeddings(input_ids, positions, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, packing)
        return x


def load_bert(folder: Path, device: torch.device, dtype: torch.dtype) -> BertModel:
    """config.json + model.safetensors of `folder` -> BertModel in eval mode, loaded strictly by name.

    Accepted layouts: transformers' BertModel names (sentence-transformers' folders) or the same under a
    `bert.` prefix (BertFor* checkpoints); UNUSED_TENSORS may be present. Any other missing or extra tensor is
    an error naming it.
    """
    file = folder / "model.safetensors"
    if not file.is_file():
        raise ModelNotAvailableError(f"{folder} has no model.safetensors (the BERT weights)")
    try:
        cfg = BertConfig.from_file(folder / "config.json")
    except (OSError, ValueError, TypeError) as e:
        raise ModelNotAvailableError(f"{folder / 'config.json'} is not a usable BERT config: {e}") from e
    skip = tuple(p + n for p in ("", "bert.") for n in UNUSED_TENSORS)  # position_ids is int64: never read
    state = read_safetensors(file, dtype, skip=skip)
    if state and all(k.startswith("bert.") for k in state):
        state = {k.removeprefix("bert."): v for k, v in state.items()}
    return strict_load(lambda: BertModel(cfg), state, device, file)
