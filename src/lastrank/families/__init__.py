"""The registry: which family a model folder belongs to, and loading it as a `Backend`.

    load_backend("jinaai/jina-reranker-v3" | "/path/to/folder", device="cpu", dtype="bfloat16") -> Backend

The registry is data: FAMILIES holds one `FamilySpec` per family (its name, the names its models answer to,
what it serves, its detection and loading, its benchmark script). Loading (`detect_family`, `load_backend`),
`lastrank serve` (a checkpoint's public names) and `lastrank bench --family` (the scripts) read this table;
its random checkpoints (`lastrank make-checkpoint`) are lastrank/checkpoints/'s table, one floor up. So adding
a family is one entry here (and its presets there) and no edit in any of them. Nothing here imports torch:
`detect` and `load`, and `load_backend` itself (families/loader.py), are named by module and attribute and
imported on their first call (as vLLM's registry does), so the CLI builds its parsers from the table without
loading a model library, and the family modules import the model at the top.

A family module under lastrank.families provides the functions a spec names:
    load(path, device, dtype, *, model_id, random_weights, **options) -> Backend
    detect(config: dict, folder: Path) -> bool     config.json (parsed; {} if absent) and the folder
where a family whose folders are told apart by config.json's `architectures` alone says so as data instead
of `detect` (`Architectures(...)`, as vLLM's registry maps architectures to models); then detection imports
nothing of the family.
Detection reads only small JSON files (config.json `architectures` / `model_type`; sentence-transformers'
modules.json), never weights, and is as strict as loading about what makes a folder that family (the
architectures, the module list, the backbone): at most one family says yes to a folder, so the order of
FAMILIES does not matter (tests/families/test_registry.py writes every preset of every family and checks
that exactly its own family claims it). What loading refuses after that is a setting inside a recognised
family (a pooling mode, a missing file), with its own precise error. docs/architecture.md shows how to add
a family.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lastrank.errors import ModelNotAvailableError
from lastrank.model.checkpoint import read_config


@dataclass(frozen=True)
class Lazy:
    """A function named by module and attribute, imported on its first call (so the table stays torch-free)."""

    module: str
    attr: str

    @classmethod
    def named(cls, name: str) -> "Lazy":
        """From "module:function" (how the checkpoint presets and the CLI's parsers name their functions)."""
        module, _, attr = name.partition(":")
        return cls(module, attr)

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module(self.module), self.attr)(*args, **kwargs)


class Architectures:
    """A detector as data: the folder's config.json `architectures` names one of these."""

    def __init__(self, *names: str):
        self.names = names

    def __call__(self, config: dict, folder: Path) -> bool:
        return any(name in (config.get("architectures") or []) for name in self.names)

    def __repr__(self) -> str:
        return f"Architectures{self.names!r}"


@dataclass(frozen=True)
class FamilySpec:
    name: str  # the one name: `lastrank bench --family`, README's table, make-checkpoint's help, errors
    supports: str  # the folders it serves (config.json / modules.json facts), for the error when none matches
    detect: Callable[[dict, Path], bool]
    load: Callable[..., Any]  # (path, device, dtype, *, model_id, random_weights, **options) -> Backend
    # The Capabilities.family values its backends report, which /v1/models shows on the wire. The family's
    # name, except causal-lm, whose backends say which reranker they are (a wire change is not made here).
    reports: tuple[str, ...]
    names: tuple[str, ...] = ()  # public model names clients send in `model` (() when no one name fits)
    # benchmarks/<file> that `lastrank bench --family NAME` runs; None: no script (jina-v3's cases are
    # `lastrank bench` itself)
    bench_script: str | None = None
    aliases: tuple[str, ...] = ()  # older spellings still accepted: the module name detect_family once returned


# ------------------------------------------------------------------------------------------ the table


def _family(module: str, *architectures: str) -> dict:
    """detect and load from lastrank.families.<module>; detect by `architectures` (data) where they are given."""
    detect = Architectures(*architectures) if architectures else Lazy(f"lastrank.families.{module}", "detect")
    return dict(detect=detect, load=Lazy(f"lastrank.families.{module}", "load"), aliases=(module,))


JINA_V3 = FamilySpec(
    name="jina-v3", reports=("jina-v3",), names=("jina-reranker-v3", "jinaai/jina-reranker-v3"),
    supports='jinaai/jina-reranker-v3 (config.json architectures ["JinaForRanking"], model.safetensors, tokenizer.json)',
    **_family("jina_v3", "JinaForRanking"))
JINA_M0 = FamilySpec(
    name="jina-m0", reports=("jina-m0",), names=("jina-reranker-m0", "jinaai/jina-reranker-m0"),
    supports='jinaai/jina-reranker-m0 (config.json architectures ["JinaVLForRanking"], model_type qwen2_vl; '
             'model.safetensors, tokenizer.json): text and image queries and documents',
    bench_script="bench_m0.py", **_family("jina_m0", "JinaVLForRanking"))
BI_ENCODER = FamilySpec(
    name="bi-encoder", reports=("bi-encoder",),
    supports="sentence-transformers folders (modules.json: Transformer -> Pooling [-> Normalize]) over a BERT "
             "encoder or a Qwen2/Qwen3 decoder (config.json model_type \"bert\", \"qwen2\" or \"qwen3\"), e.g. "
             "sentence-transformers/all-MiniLM-L6-v2, jinaai/jina-code-embeddings-0.5b",
    **_family("bi_encoder"))
CROSS_ENCODER = FamilySpec(
    name="cross-encoder", reports=("cross-encoder",),
    supports='XLM-RoBERTa cross-encoders: BAAI/bge-reranker-v2-m3 (config.json architectures '
             '["XLMRobertaForSequenceClassification"], model.safetensors) and jinaai/jina-reranker-v2-base-multilingual '
             '(the same architectures, auto_map to Jina\'s XLMRobertaFlashConfig, pytorch_model.bin); tokenizer.json',
    bench_script="bench_cross_encoder.py", **_family("cross_encoder", "XLMRobertaForSequenceClassification"))
CAUSAL_LM = FamilySpec(
    name="causal-lm", reports=("qwen3-reranker", "mxbai-rerank-v2"),
    supports='causal-LM rerankers: Qwen/Qwen3-Reranker-0.6B / -4B (architectures ["Qwen3ForCausalLM"], or the '
             'converted ["Qwen3ForSequenceClassification"]) and mixedbread-ai/mxbai-rerank-base-v2 / -large-v2 '
             '(["Qwen2ForCausalLM"]), recognised by "qwen3-reranker" / "mxbai-rerank" in the folder path or '
             'config.json _name_or_path (a plain Qwen chat model is not a reranker); model.safetensors (or an '
             'index of shards), tokenizer.json',
    bench_script="bench_causal_lm.py", **_family("causal_lm"))

# Every family. Detection is exclusive (module docstring), so the order is only the order errors list them in.
FAMILIES: tuple[FamilySpec, ...] = (JINA_V3, JINA_M0, BI_ENCODER, CROSS_ENCODER, CAUSAL_LM)


def family_spec(name: str) -> FamilySpec:
    """The spec by its name or an older spelling (the module name, e.g. "causal_lm")."""
    for spec in FAMILIES:
        if name == spec.name or name in spec.aliases:
            return spec
    raise KeyError(f"unknown family {name!r}; the families are {', '.join(s.name for s in FAMILIES)}")


def known_names(family: str) -> tuple[str, ...]:
    """The public names a family's models are known by (e.g. jina-v3: "jina-reranker-v3"), which clients send
    in `model`; () for families whose checkpoints have no one name. `family` is Capabilities.family."""
    for spec in FAMILIES:
        if family in spec.reports:
            return spec.names
    return ()


def st_modules(folder: Path) -> list[dict] | None:
    """sentence-transformers' modules.json entries in order, or None when the folder has none (or it is not a
    list of modules)."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        return None
    return sorted(modules, key=lambda m: m.get("idx", 0))


def module_kind(module: dict) -> str:
    # "sentence_transformers.models.Pooling" -> "Pooling" (newer releases also write other module paths)
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def folder_facts(folder: Path) -> tuple[dict, str]:
    """-> (config.json parsed, a one-line description of what was found, for errors)."""
    config = read_config(folder)
    found = [f"architectures={config.get('architectures')}", f"model_type={config.get('model_type')!r}"]
    if (folder / "modules.json").is_file():
        modules = st_modules(folder)
        found.append("a sentence-transformers modules.json"
                     + (f" ({' -> '.join(module_kind(m) for m in modules)})" if modules else ""))
    return config, ", ".join(found)


def detect_family(folder: Path, config: dict | None = None) -> str:
    """The name of the family of `folder` (FamilySpec.name); one clear error when none matches. `config`:
    its config.json already parsed (folder_facts), so that a load reads it once."""
    if config is None:
        config = folder_facts(folder)[0]
    for spec in FAMILIES:
        if spec.detect(config, folder):
            return spec.name
    _, found = folder_facts(folder)
    supported = "; ".join(f"{spec.name}: {spec.supports}" for spec in FAMILIES)
    raise ModelNotAvailableError(f"{folder} is not a model lastrank can serve: found {found}. Supported: {supported}")


# Loading picks a device and a dtype, which needs torch: families/loader.py, named like a family's own load and
# imported on the first call, so this table stays torch-free.
load_backend = Lazy("lastrank.families.loader", "load_backend")
