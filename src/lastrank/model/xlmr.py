"""XLM-RoBERTa encoder + classification head: the cross-encoders bge-reranker-v2-m3 and jina-reranker-v2.

One implementation, two checkpoint layouts:

  - "transformers" (BAAI/bge-reranker-v2-m3, model.safetensors): transformers' XLMRobertaForSequenceClassification
    names, `roberta.embeddings.*`, `roberta.encoder.layer.N.attention.self.{query,key,value}`, ...,
    `classifier.dense`, `classifier.out_proj`.
  - "flash" (jinaai/jina-reranker-v2-base-multilingual, pytorch_model.bin): Jina's remote code
    (modeling_xlm_roberta.py, adapted from flash-attn's bert.py): `roberta.emb_ln`,
    `roberta.encoder.layers.N.mixer.Wqkv`, `mixer.out_proj`, `norm1`, `mlp.fc1`, `mlp.fc2`, `norm2`,
    `classifier.*`.

The modules below carry the transformers names (the ones TEI and vLLM also use), with one exception: q, k and v
are one Linear, `attention.self.qkv`, whose rows are [query; key; value] (exactly Jina's `Wqkv`; the
transformers layout's three matrices are concatenated at load). `checkpoint_names` maps every module tensor
to the checkpoint tensor(s) it comes from, for both layouts.

What Jina's flash code does, checked against its source (modeling_xlm_roberta.py, embedding.py, block.py,
mha.py, mlp.py of the hub repo), and how it compares with plain XLM-R (transformers):
  - positions: absolute learned embeddings (`position_embedding_type: "absolute"`, 1026 rows), ids from
    transformers' own `create_position_ids_from_input_ids` (padding_idx + 1 + running count of non-pad
    tokens; a pad token gets padding_idx). No ALiBi (that is jina-reranker-v1 / jina-bert), no rotary
    (that is jina-embeddings-v3's flash XLM-R): the attention calls pass alibi_slopes=None and build no
    rotary embedding. Same as XLM-R.
  - embeddings: word + position + token_type (type 0; the tokenizer returns no token_type_ids), then
    LayerNorm `emb_ln`, then dropout. Same as XLM-R's embeddings.LayerNorm.
  - blocks: `Block(prenorm=False)`: x = norm1(x + out_proj(attn(Wqkv(x)))); x = norm2(x + fc2(gelu(fc1(x)))),
    i.e. the post-norm layer of BERT/XLM-R. `hidden_act: "gelu"` -> exact (erf) GELU
    (`approximate="none"`), as transformers' "gelu".
  - attention: softmax(q k^T / sqrt(head_dim)) v over the sequence's own tokens, `Wqkv` rows split as
    "(three h d)" = [q; k; v]. Padded batches on CPU mask pad keys with -10000 (transformers: the dtype's
    minimum); on CUDA with flash-attn installed the official code unpads (varlen), as lastrank always does.
    Neither difference changes a real token's output beyond float rounding.
  - head: `XLMRobertaClassificationHead`: <s> token -> dense -> tanh -> out_proj, no pooler
    (`add_pooling_layer=False`). Same as transformers.
  - eps: config.json layer_norm_eps (1e-05 in both models).
So after the name mapping the two layouts are the same network; tests/model/test_xlmr.py checks both
against transformers' XLMRobertaForSequenceClassification, and the flash layout also against a test-side
port of the official block structure.

Packed forward: the pairs of a call are concatenated into one [tokens, hidden] matrix (no padding); every
linear layer runs on all tokens at once and attention runs per pair (`Packing`), so no token ever
attends to another pair's tokens and no compute is spent on padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lastrank.errors import ModelNotAvailableError

LAYOUTS = ("transformers", "flash")
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass
class XLMRConfig:
    """The config.json fields the math needs, in config.json's spelling."""

    vocab_size: int = 250002
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8194
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    num_labels: int = 1
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        if self.hidden_act not in _GELU:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r} (XLM-R cross-encoders use gelu)")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"unsupported position_embedding_type {self.position_embedding_type!r} "
                             "(bge-reranker-v2-m3 and jina-reranker-v2 use absolute positions)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_tokens(self) -> int:
        """Longest input the position table holds: positions run from pad_token_id + 1."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def from_dict(cls, d: dict) -> "XLMRConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        if "num_labels" not in d and isinstance(d.get("id2label"), dict):
            kw["num_labels"] = len(d["id2label"])  # transformers derives num_labels from id2label
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | Path) -> "XLMRConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------------------------- packing

class Packing:
    """Where each sequence sits in the packed token axis, and the per-pair attention over it.

    Sequences of equal length are attended together in one batched call (no padding); a group is cut
    so one call's score matrix stays under `max_scores` elements."""

    def __init__(self, lengths: list[int], device: torch.device, num_heads: int, max_scores: int = 1 << 26):
        self.lengths = lengths
        starts, at = [], 0
        for n in lengths:
            starts.append(at)
            at += n
        self.total = at
        self.starts = torch.tensor(starts, dtype=torch.long, device=device)  # row of each sequence's <s>
        by_length: dict[int, list[int]] = {}
        for s, n in zip(starts, lengths):
            by_length.setdefault(n, []).append(s)
        self.groups: list[tuple[int, int, torch.Tensor]] = []  # (n sequences, length, token rows [n * length])
        for n, group_starts in sorted(by_length.items()):
            per_call = max(1, max_scores // max(1, num_heads * n * n))
            for i in range(0, len(group_starts), per_call):
                chunk = torch.tensor(group_starts[i:i + per_call], dtype=torch.long, device=device)
                rows = (chunk[:, None] + torch.arange(n, device=device)[None, :]).reshape(-1)
                self.groups.append((len(chunk), n, rows))

    def attention(self, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        """qkv [T, 3 * hidden] (rows [q; k; v] per token) -> context [T, hidden], each pair on its own."""
        T = qkv.shape[0]
        head_dim = qkv.shape[1] // (3 * num_heads)
        qkv = qkv.view(T, 3, num_heads, head_dim)
        out = qkv.new_empty(T, num_heads, head_dim)
        for n, length, rows in self.groups:
            x = qkv.index_select(0, rows).view(n, length, 3, num_heads, head_dim)
            q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))  # [n, heads, length, head_dim]
            ctx = F.scaled_dot_product_attention(q, k, v)
            out.index_copy_(0, rows, ctx.transpose(1, 2).reshape(n * length, num_heads, head_dim))
        return out.view(T, num_heads * head_dim)


def position_ids(input_ids: torch.Tensor, packing: Packing, padding_idx: int) -> torch.Tensor:
    """transformers' create_position_ids_from_input_ids, per packed sequence: padding_idx + running count of
    non-pad tokens, and padding_idx itself at a pad token (a `<pad>` typed inside a text is such a token)."""
    mask = (input_ids != padding_idx).long()
    count = mask.cumsum(0)
    before = torch.repeat_interleave(count[packing.starts] - mask[packing.starts],
                                     torch.tensor(packing.lengths, device=input_ids.device))
    return (count - before) * mask + padding_idx


# ----------------------------------------------------------------------------------------------- modules

class XLMRobertaEmbeddings(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # token type 0 everywhere: XLM-R tokenizers return no token_type_ids, so both official codes use row 0
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0] + self.position_embeddings(positions)
        return self.LayerNorm(x)


class XLMRobertaSelfAttention(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # rows [query; key; value] (Jina's Wqkv)


class XLMRobertaSelfOutput(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)  # Jina: mixer.out_proj
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # Jina: norm1


class XLMRobertaAttention(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.self = XLMRobertaSelfAttention(cfg)
        self.output = XLMRobertaSelfOutput(cfg)


class XLMRobertaIntermediate(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)  # Jina: mlp.fc1


class XLMRobertaOutput(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)  # Jina: mlp.fc2
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # Jina: norm2


class XLMRobertaLayer(nn.Module):
    """Post-norm transformer layer (BERT's; Jina's Block(prenorm=False))."""

    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.gelu = _GELU[cfg.hidden_act]
        self.attention = XLMRobertaAttention(cfg)
        self.intermediate = XLMRobertaIntermediate(cfg)
        self.output = XLMRobertaOutput(cfg)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        attn = self.attention
        ctx = packing.attention(attn.self.qkv(x), self.num_heads)
        x = attn.output.LayerNorm(x + attn.output.dense(ctx))
        h = F.gelu(self.intermediate.dense(x), approximate=self.gelu)
        return self.output.LayerNorm(x + self.output.dense(h))


class XLMRobertaEncoder(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.layer = nn.ModuleList(XLMRobertaLayer(cfg) for _ in range(cfg.num_hidden_layers))


class XLMRobertaModel(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.embeddings = XLMRobertaEmbeddings(cfg)
        self.encoder = XLMRobertaEncoder(cfg)


class XLMRobertaClassificationHead(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, first_tokens: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(first_tokens)))


class XLMRobertaForSequenceClassification(nn.Module):
    def __init__(self, cfg: XLMRConfig):
        super().__init__()
        self.config = cfg
        self.roberta = XLMRobertaModel(cfg)
        self.classifier = XLMRobertaClassificationHead(cfg)

    def forward(self, sequences: list[list[int]]) -> torch.Tensor:
        """Logits [len(sequences), num_labels] of every (already encoded) pair, in one packed forward."""
        device = self.classifier.dense.weight.device
        lengths = [len(s) for s in sequences]
        if min(lengths) < 1 or max(lengths) > self.config.max_tokens:
            raise ValueError(f"sequence lengths must be within 1..{self.config.max_tokens}, got {min(lengths)}..{max(lengths)}")
        packing = Packing(lengths, device, self.config.num_attention_heads)
        ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
        x = self.roberta.embeddings(ids, position_ids(ids, packing, self.config.pad_token_id))
        for layer in self.roberta.encoder.layer:
            x = layer(x, packing)
        # the head reads only each pair's <s> row
        return self.classifier(x.index_select(0, packing.starts))


# ----------------------------------------------------------------------------------------------- loading

def checkpoint_names(cfg: XLMRConfig, layout: str) -> dict[str, list[str]]:
    """module tensor name -> the checkpoint tensor names it is made of (concatenated along rows)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    flash = layout == "flash"
    emb = "roberta.embeddings."
    names: dict[str, list[str]] = {}
    for t in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        names[f"{emb}{t}.weight"] = [f"{emb}{t}.weight"]
    for p in ("weight", "bias"):
        names[f"{emb}LayerNorm.{p}"] = [f"roberta.emb_ln.{p}" if flash else f"{emb}LayerNorm.{p}"]
        for i in range(cfg.num_hidden_layers):
            ours = f"roberta.encoder.layer.{i}."
            if flash:
                theirs = f"roberta.encoder.layers.{i}."
                parts = {"attention.self.qkv": ["mixer.Wqkv"], "attention.output.dense": ["mixer.out_proj"],
                         "attention.output.LayerNorm": ["norm1"], "intermediate.dense": ["mlp.fc1"],
                         "output.dense": ["mlp.fc2"], "output.LayerNorm": ["norm2"]}
            else:
                theirs = ours
                parts = {"attention.self.qkv": ["attention.self.query", "attention.self.key", "attention.self.value"]}
                parts |= {k: [k] for k in ("attention.output.dense", "attention.output.LayerNorm",
                                           "intermediate.dense", "output.dense", "output.LayerNorm")}
            for module, sources in parts.items():
                names[f"{ours}{module}.{p}"] = [f"{theirs}{s}.{p}" for s in sources]
        for head in ("dense", "out_proj"):
            names[f"classifier.{head}.{p}"] = [f"classifier.{head}.{p}"]
    return names


def detect_layout(tensor_names) -> str:
    return "flash" if any(".mixer.Wqkv." in n for n in tensor_names) else "transformers"


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Tensors a checkpoint may carry that the official sequence-classification forward never reads.
UNUSED = ("roberta.embeddings.position_ids", "roberta.pooler.")


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Every tensor of the folder's weights file: model.safetensors, else pytorch_model.bin read with
    torch.load(weights_only=True), which unpickles tensors and plain containers only and refuses anything
    that would run code."""
    for name in WEIGHT_FILES:
        file = path / name
        if file.is_file():
            break
    else:
        raise ModelNotAvailableError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file)), file
        try:  # mmap: the zip format (torch >= 1.6) is read in place, without a second copy in memory
            state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file, or a pickle that is more than tensors
        raise ModelNotAvailableError(f"could not read {file}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotAvailableError(f"{file} is not a state dict of tensors")
    return state, file


def load_xlmr(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[XLMRobertaForSequenceClassification, str]:
    """Strict load of either layout (detected from the tensor names) -> (model in eval mode, layout)."""
    cfg = XLMRConfig.from_file(path / "config.json")
    raw, file = read_weights(path)
    layout = detect_layout(raw)
    names = checkpoint_names(cfg, layout)
    needed = {s for sources in names.values() for s in sources}
    missing = sorted(needed - raw.keys())
    unexpected = sorted(k for k in raw.keys() - needed if not k.startswith(UNUSED))
    if missing or unexpected:
        raise ModelNotAvailableError(
            f"{file} is not an XLM-R sequence-classification checkpoint in the {layout} layout: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    state = {}
    for ours, sources in names.items():
        parts = [raw.pop(s) for s in sources]
        t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        state[ours] = t.to(device=device, dtype=dtype).contiguous()
    del raw
    with torch.device("meta"):
        model = XLMRobertaForSequenceClassification(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelNotAvailableError(f"{file} does not match {path / 'config.json'}: {e}") from e
    return model.eval().requires_grad_(False), layout
