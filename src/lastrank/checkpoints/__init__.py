"""Random-weight checkpoints in each family's official layout, for tests and benchmarks (`lastrank
make-checkpoint --preset NAME`): one writer module per layout (jina_v3.py, xlmr.py, causal.py, m0.py, st.py)
and the table of presets, by family.

Their scores mean nothing; every folder is marked as random weights (model/checkpoint.py, which the loaders
read). This package sits above families/ (a writer may take a family's facts, e.g. causal-lm's label words)
and nothing below it imports it. The table and the writers' modules are torch-free: each writer imports
torch when it runs, so `lastrank make-checkpoint --help` lists the presets without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from lastrank.checkpoints import causal, m0, st, xlmr
from lastrank.checkpoints.jina_v3 import make_checkpoint
from lastrank.families import BI_ENCODER, CAUSAL_LM, CROSS_ENCODER, FAMILIES, JINA_M0, JINA_V3, FamilySpec


@dataclass(frozen=True)
class Preset:
    """A random-weight checkpoint in the official layout. Its scores mean nothing; the folder is marked as
    random weights."""

    write: Callable[..., Path]  # (path, *, seed, dtype, model_max_length) -> the folder written
    tiny: bool  # the test size (seconds on a CPU); False: the released model's shape, for benchmarks
    about: str  # one line for `make-checkpoint --help`


def _write_jina_v3(preset: str, path, *, seed: int = 0, dtype: str = "bfloat16", model_max_length: int = 131072):
    return make_checkpoint(path, preset=preset, seed=seed, dtype=dtype, model_max_length=model_max_length)


def _write_xlmr(preset: str, path, *, seed: int = 0, dtype: str = "bfloat16", model_max_length: int | None = None):
    # model_max_length does not apply: the hub repo's tokenizer_config is what gets written
    return xlmr.make_xlmr_checkpoint(path, preset=preset, seed=seed, dtype=dtype)


def _write_causal(kind: str, size: str, path, *, seed: int = 0, dtype: str = "bfloat16",
                  model_max_length: int = 131072):
    return causal.make_causal_checkpoint(path, kind, size, seed=seed, dtype=dtype, model_max_length=model_max_length)


def _write_m0(size: str, path, *, seed: int = 0, dtype: str = "bfloat16", model_max_length: int | None = None):
    # model_max_length does not apply: m0's limit is its own (10,240)
    return m0.make_m0_checkpoint(path, size, seed=seed, dtype=dtype)


def _write_st(options: dict, path, *, seed: int = 0, dtype: str = "bfloat16", model_max_length: int | None = None):
    # model_max_length does not apply: sentence_bert_config.json's max_seq_length (64) is the limit
    return st.make_st_checkpoint(path, seed=seed, dtype=dtype, **options)


# By family name (FamilySpec.name); every family has at least one tiny preset (tests/families/test_registry.py).
PRESETS: dict[str, dict[str, Preset]] = {
    JINA_V3.name: {
        "tiny": Preset(partial(_write_jina_v3, "tiny"), True, "hidden 64, 2 layers, the real vocabulary"),
        "full": Preset(partial(_write_jina_v3, "full"), False, "jina-reranker-v3's shape (Qwen3-0.6B)")},
    JINA_M0.name: {
        name: Preset(partial(_write_m0, size), size == "tiny",
                     "hidden 64" if size == "tiny" else "the released 2.4B shape")
        for name, size in m0.PRESETS.items()},
    BI_ENCODER.name: {
        "bi-encoder-bert-tiny": Preset(partial(_write_st, dict(backbone="bert")), True,
                                       "sentence-transformers: BERT (all-MiniLM-L6-v2's tokenizer), mean pooling, "
                                       "Normalize; hidden 32"),
        "bi-encoder-qwen3-tiny": Preset(partial(_write_st, dict(backbone="qwen3", pooling="lasttoken")), True,
                                        "sentence-transformers: Qwen3 decoder, last-token pooling, Normalize; "
                                        "hidden 64")},
    CROSS_ENCODER.name: {
        name: Preset(partial(_write_xlmr, name), name.endswith("-tiny"),
                     "hidden 32, 2 layers" if name.endswith("-tiny") else "the released shape")
        for name in xlmr.PRESETS},
    CAUSAL_LM.name: {
        name: Preset(partial(_write_causal, kind, size), size == "tiny",
                     f"{kind} layout, "
                     + ("hidden 64, the real vocabulary" if size == "tiny" else "the released shape"))
        for name, (kind, size) in causal.PRESETS.items()},
}


def presets(spec: FamilySpec) -> dict[str, Preset]:
    """A family's presets ({} for a family without any)."""
    return PRESETS.get(spec.name, {})


def preset(name: str) -> tuple[FamilySpec, Preset]:
    """(the family, the preset) that `lastrank make-checkpoint --preset name` writes."""
    for spec in FAMILIES:
        if name in presets(spec):
            return spec, presets(spec)[name]
    raise KeyError(f"unknown preset {name!r}")
