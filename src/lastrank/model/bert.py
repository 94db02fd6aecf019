"""BERT encoder (no head): the backbone of BERT-based sentence-transformers models (all-MiniLM-L6-v2).

Module attributes mirror the checkpoint's tensor names as transformers' `BertModel` saves them
(`embeddings.word_embeddings`, `encoder.layer.{i}.attention.self.query`, `...attention.output.LayerNorm`,
`...intermediate.dense`, `...output.dense`), so model.safetensors loads strictly with no rename table
(`load_bert`). The math follows transformers' `modeling_bert.py` (post-LayerNorm residual blocks, absolute
learned positions, bidirectional attention).

No padding waste: a batch of sequences runs as one packed forward. Their tokens are concatenated ([T] rows
in all), positions restart at 0 for each, every projection / LayerNorm / MLP runs on all T rows at once,
and attention is confined to each sequence by one SDPA call per sequence on its slice of rows
(`segment_attention`). In float32 this equals the padded batch with an attention mask to rounding
(tests/model/test_bert.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lastrank.errors import ModelNotAvailableError

# transformers' ACT2FN names this file implements. "gelu" is the exact (erf) GELU, as in BERT's config.
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

# Tensors a BERT checkpoint may hold that the encoder never reads: the position-id buffer older transformers
# saved (int64, always arange), and BertModel's pooler (tanh over [CLS]), which sentence-transformers' Pooling
# module does not use. Everything else must match exactly.
UNUSED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


@dataclass
class BertConfig:
    """The fields of config.json the math needs, in config.json's spelling."""

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


class Packing:
    """The sequences of one packed forward: their lengths, where each starts, and per-row positions."""

    def __init__(self, seq_lens: list[int], device: torch.device):
        if not seq_lens or min(seq_lens) < 1:
            raise ValueError(f"every packed sequence needs at least one token, got lengths {seq_lens}")
        self.seq_lens = list(seq_lens)
        self.starts = [0]
        for n in self.seq_lens[:-1]:
            self.starts.append(self.starts[-1] + n)
        self.total = sum(self.seq_lens)
        # positions restart for every sequence: each sees its position embeddings exactly as if it ran alone
        self.positions = torch.cat([torch.arange(n, device=device) for n in self.seq_lens])

    def slices(self):
        return (slice(s, s + n) for s, n in zip(self.starts, self.seq_lens))


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Bidirectional attention within each sequence: q, k, v [heads, T, d] -> [heads, T, d].

    One SDPA call per sequence on its rows: no [T, T] mask, no work on pairs of different sequences. (Padding
    the batch instead would spend the projections and MLP on pad rows; for a rerank request whose documents
    range from 20 to 250 tokens that is most of the compute.)
    """
    if len(packing.seq_lens) == 1:
        return F.scaled_dot_product_attention(q, k, v)
    out = torch.empty_like(q)
    for s in packing.slices():
        out[:, s] = F.scaled_dot_product_attention(q[:, s], k[:, s], v[:, s])
    return out


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            # single-segment input (all sentence-transformers encode calls): every row is type 0
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        T = x.shape[0]

        def heads(t: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [heads, T, d]
            return t.view(T, self.num_heads, self.head_dim).transpose(0, 1)

        out = segment_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), packing)
        return out.transpose(0, 1).reshape(T, self.num_heads * self.head_dim)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(attended) + residual)  # post-norm: BERT normalises after the residual


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)  # "self" is the checkpoint's name (attention.self.query, ...)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        return self.output(self.self(x, packing), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        x = self.attention(x, packing)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertModel(nn.Module):
    """Token states of packed sequences: forward(input_ids [T], seq_lens) -> [T, hidden]."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, seq_lens: list[int] | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        packing = Packing(seq_lens if seq_lens is not None else [input_ids.shape[0]], input_ids.device)
        if packing.total != input_ids.shape[0]:
            raise ValueError(f"seq_lens add up to {packing.total} but input_ids has {input_ids.shape[0]} tokens")
        if max(packing.seq_lens) > self.config.max_position_embeddings:
            raise ValueError(f"a sequence of {max(packing.seq_lens)} tokens exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        x = self.embeddings(input_ids, packing.positions, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, packing)
        return x


def load_bert(folder: Path, device: torch.device, dtype: torch.dtype) -> BertModel:
    """config.json + model.safetensors of `folder` -> BertModel in eval mode, loaded strictly by name.

    Accepted layouts: transformers' BertModel names (sentence-transformers' folders) or the same under a
    `bert.` prefix (BertFor* checkpoints); UNUSED_TENSORS may be present. Any other missing or extra tensor is
    an error naming it.
    """
    from lastrank.model.loading import read_safetensors

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
    if device.type != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    with torch.device("meta"):
        model = BertModel(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelNotAvailableError(f"{file} does not match a BertModel of {folder / 'config.json'}: {e}") from e
    return model.eval().requires_grad_(False)
