"""XLM-RoBERTa encoder + classification head: the cross-encoders bge-reranker-v2-m3 and jina-reranker-v2.

One implementation, two checkpoint layouts:

  - "transformers" (BAAI/bge-reranker-v2-m3, model.safetensors): transformers' XLMRobertaForSequenceClassification
    names, `roberta.embeddings.*`, `roberta.encoder.layer.N.attention.self.{query,key,value}`, ...,
    `classifier.dense`, `classifier.out_proj`.
  - "flash" (jinaai/jina-reranker-v2-base-multilingual, pytorch_model.bin): Jina's remote code
    (modeling_xlm_roberta.py, adapted from flash-attn's bert.py): `roberta.emb_ln`,
    `roberta.encoder.layers.N.mixer.Wqkv`, `mixer.out_proj`, `norm1`, `mlp.fc1`, `mlp.fc2`, `norm2`,
    `classifier.*`.

The encoder is model/bert.py's `BertModel` (XLM-R is BERT's network with other position ids), under
`roberta.`; this file holds only what is XLM-R's: its config (XLMRConfig: the position rule "roberta", fused
q/k/v), the classification head, the two checkpoint layouts and their loading. The modules carry the
transformers names (the ones TEI and vLLM also use), with one exception: q, k and v are one Linear,
`attention.self.qkv`, whose rows are [query; key; value] (exactly Jina's `Wqkv`; the transformers layout's
three matrices are concatenated at load). `checkpoint_names` maps every module tensor to the checkpoint
tensor(s) it comes from, for both layouts.

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

Packed forward (model/bert.py's `EncoderPacking`): the pairs of a call are concatenated into one [tokens, hidden]
matrix (no padding); every linear layer runs on all tokens at once and attention runs per pair, so no token
ever attends to another pair's tokens and no compute is spent on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.bert import BertConfig, BertModel, EncoderPacking
from lastrank.model.weights import strict_load

LAYOUTS = ("transformers", "flash")


@dataclass
class XLMRConfig(BertConfig):
    """BertConfig with XLM-R's defaults, its position ids (padding_idx + 1 + running count of non-pad
    tokens), q/k/v fused (`attention.self.qkv`, Jina's Wqkv) and the head's num_labels."""

    position_rule: ClassVar[str] = "roberta"
    fused_qkv: ClassVar[bool] = True

    vocab_size: int = 250002
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 8194
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    num_labels: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "XLMRConfig":
        if "num_labels" not in d and isinstance(d.get("id2label"), dict):
            d = {**d, "num_labels": len(d["id2label"])}  # transformers derives num_labels from id2label
        return super().from_dict(d)


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
        self.roberta = BertModel(cfg)
        self.classifier = XLMRobertaClassificationHead(cfg)

    def forward(self, sequences: list[list[int]]) -> torch.Tensor:
        """Logits [len(sequences), num_labels] of every (already encoded) pair, in one packed forward."""
        device = self.classifier.dense.weight.device
        packing = EncoderPacking([len(s) for s in sequences], device, self.config.num_attention_heads)
        ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
        x = self.roberta(ids, packing=packing)
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
        state[ours] = t.to(dtype=dtype).contiguous()
    del raw
    return strict_load(lambda: XLMRobertaForSequenceClassification(cfg), state, device, file), layout
