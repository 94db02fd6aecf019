"""Random-weight checkpoints in each family's official layout, for tests and benchmarks (`lastrank
make-checkpoint --preset NAME`): one writer module per layout (jina_v3.py, xlmr.py, causal.py, m0.py, st.py)
and the table of presets, by family.

Their scores mean nothing; every folder is marked as random weights (model/checkpoint.py, which the loaders
read). This package sits above families/ (a writer may take a family's facts, e.g. causal-lm's label words)
and nothing below it imports it. The table is data and imports no writer: a preset names its writer as
"module:function" and the writer's arguments, and `Preset.write` imports that module, so `lastrank
make-checkpoint --help` lists the presets without loading torch while the writers import the model at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lastrank.families import BI_ENCODER, CAUSAL_LM, CROSS_ENCODER, FAMILIES, JINA_M0, JINA_V3, FamilySpec, Lazy


@dataclass(frozen=True)
class Preset:
    """A random-weight checkpoint in the official layout. Its scores mean nothing; the folder is marked as
    random weights."""

    writer: str  # "module:function" of the writer, e.g. "lastrank.checkpoints.m0:make_m0_checkpoint"
    tiny: bool  # the test size (seconds on a CPU); False: the released model's shape, for benchmarks
    about: str  # one line for `make-checkpoint --help`
    options: dict[str, Any] = field(default_factory=dict)  # the writer's arguments that make this preset
    # whether --model-max-length reaches the tokenizer the writer copies: not for the families whose limit is
    # their own (m0's 10,240, XLM-R's hub tokenizer_config, sentence_bert_config.json's max_seq_length)
    takes_max_length: bool = False

    def write(self, path, *, seed: int = 0, dtype: str = "bfloat16", model_max_length: int = 131072) -> Path:
        """Write the folder (-> the folder written)."""
        write = Lazy.named(self.writer)
        extra = {"model_max_length": model_max_length} if self.takes_max_length else {}
        return write(path, seed=seed, dtype=dtype, **self.options, **extra)


JINA_V3_WRITER = "lastrank.checkpoints.jina_v3:make_jina_v3_checkpoint"
M0_WRITER = "lastrank.checkpoints.m0:make_m0_checkpoint"
ST_WRITER = "lastrank.checkpoints.st:make_st_checkpoint"
XLMR_WRITER = "lastrank.checkpoints.xlmr:make_xlmr_checkpoint"
CAUSAL_WRITER = "lastrank.checkpoints.causal:make_causal_checkpoint"

# `--preset` name -> the writer's (kind, size): causal.py's layouts and sizes
CAUSAL_PRESETS = {
    "qwen3-reranker-0.6b": ("qwen3-reranker", "0.6b"),
    "qwen3-reranker-tiny": ("qwen3-reranker", "tiny"),
    "qwen3-reranker-seq-cls-tiny": ("qwen3-reranker-seq-cls", "tiny"),
    "mxbai-rerank-base-v2": ("mxbai-rerank-v2", "base"),
    "mxbai-rerank-v2-tiny": ("mxbai-rerank-v2", "tiny"),
}
M0_PRESETS = {"jina-reranker-m0-tiny": "tiny", "jina-reranker-m0": "2b"}  # -> m0.py's size
XLMR_PRESETS = ("bge-reranker-v2-m3-tiny", "bge-reranker-v2-m3", "jina-reranker-v2-tiny", "jina-reranker-v2")  # xlmr.py's

# By family name (FamilySpec.name); every family has at least one tiny preset (tests/families/test_registry.py).
PRESETS: dict[str, dict[str, Preset]] = {
    JINA_V3.name: {
        "jina-v3-tiny": Preset(JINA_V3_WRITER, True, "hidden 64, 2 layers, the real vocabulary", dict(size="tiny"), True),
        "jina-v3-full": Preset(JINA_V3_WRITER, False, "jina-reranker-v3's shape (Qwen3-0.6B)", dict(size="full"),
                               True)},
    JINA_M0.name: {
        name: Preset(M0_WRITER, size == "tiny", "hidden 64" if size == "tiny" else "the released 2.4B shape",
                     dict(size=size))
        for name, size in M0_PRESETS.items()},
    BI_ENCODER.name: {
        "bi-encoder-bert-tiny": Preset(ST_WRITER, True, "sentence-transformers: BERT (all-MiniLM-L6-v2's tokenizer), "
                                                        "mean pooling, Normalize; hidden 32", dict(backbone="bert")),
        "bi-encoder-qwen3-tiny": Preset(ST_WRITER, True, "sentence-transformers: Qwen3 decoder, last-token pooling, "
                                                         "Normalize; hidden 64",
                                        dict(backbone="qwen3", pooling="lasttoken"))},
    CROSS_ENCODER.name: {
        name: Preset(XLMR_WRITER, name.endswith("-tiny"),
                     "hidden 32, 2 layers" if name.endswith("-tiny") else "the released shape", dict(preset=name))
        for name in XLMR_PRESETS},
    CAUSAL_LM.name: {
        name: Preset(CAUSAL_WRITER, size == "tiny",
                     f"{kind} layout, " + ("hidden 64, the real vocabulary" if size == "tiny" else "the released shape"),
                     dict(kind=kind, size=size), True)
        for name, (kind, size) in CAUSAL_PRESETS.items()},
}


# The names these presets had when lastrank served Jina V3 only; users' commands and scripts still say them.
ALIASES = {"tiny": "jina-v3-tiny", "full": "jina-v3-full"}


def presets(spec: FamilySpec) -> dict[str, Preset]:
    """A family's presets ({} for a family without any)."""
    return PRESETS.get(spec.name, {})


def preset(name: str) -> tuple[FamilySpec, Preset]:
    """(the family, the preset) that `lastrank make-checkpoint --preset name` writes (name, or an alias)."""
    name = ALIASES.get(name, name)
    for spec in FAMILIES:
        if name in presets(spec):
            return spec, presets(spec)[name]
    raise KeyError(f"unknown preset {name!r}")
