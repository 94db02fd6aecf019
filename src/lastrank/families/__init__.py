"""The registry: which family a model folder belongs to, and loading it as a `Backend`.

    load_backend("jinaai/jina-reranker-v3" | "/path/to/folder", device="cpu", dtype="bfloat16") -> Backend

Each family is a module here with two module-level functions:
    detect(config: dict, folder: Path) -> bool     config.json (parsed; {} if absent) and the folder
    load(path, device, dtype, *, model_id, random_weights, **options) -> Backend
The first family in FAMILIES whose `detect` says yes loads the folder. Detection reads only small JSON
files (config.json `architectures` / `model_type`; sentence-transformers' modules.json), never weights.
docs/architecture.md shows how to add a family.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from lastrank.errors import ModelNotAvailableError

# Module names under lastrank.families, in detection order (the more specific first).
FAMILIES: list[str] = ["jina_v3", "jina_m0", "bi_encoder", "cross_encoder", "causal_lm"]


def family_module(name: str):
    return importlib.import_module(f"lastrank.families.{name}")


def known_names(family: str) -> tuple[str, ...]:
    """The public names a family's models are known by (e.g. jina-v3: "jina-reranker-v3"), which clients send
    in `model`; () for families whose checkpoints have no one name. `family` is Capabilities.family."""
    for name in FAMILIES:
        module = family_module(name)
        if getattr(module, "FAMILY", None) == family:
            return tuple(getattr(module, "NAMES", ()))
    return ()


def folder_facts(folder: Path) -> tuple[dict, str]:
    """-> (config.json parsed, a one-line description of what was found, for errors)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    found = [f"architectures={config.get('architectures')}", f"model_type={config.get('model_type')!r}"]
    if (folder / "modules.json").is_file():
        found.append("a sentence-transformers modules.json")
    return config, ", ".join(found)


def detect_family(folder: Path) -> str:
    """The registry name of the family of `folder`; one clear error when none matches."""
    config, found = folder_facts(folder)
    for name in FAMILIES:
        if family_module(name).detect(config, folder):
            return name
    supported = "; ".join(f"{name}: {family_module(name).SUPPORTS}" for name in FAMILIES)
    raise ModelNotAvailableError(f"{folder} is not a model lastrank can serve: found {found}. Supported: {supported}")


def checkpoint_dtype(folder: Path) -> str:
    """dtype "auto": what the checkpoint says it was saved in (config.json `torch_dtype`, or `dtype` in newer
    transformers), so Jina V3 runs in bfloat16 as released and all-MiniLM-L6-v2, whose config names none
    (float32 weights), in float32; float32 when the config names something else or nothing."""
    config, _ = folder_facts(folder)
    value = str(config.get("torch_dtype") or config.get("dtype") or "float32").lower()
    return value if value in ("bfloat16", "float32") else "float32"


def load_backend(model: str | Path, device: str | None = "cpu", dtype: str | None = "auto", revision: str | None = None,
                 cache_dir: str | None = None, *, path: Path | None = None, family: str | None = None, **options):
    """Resolve `model` (hub id, short name or folder), detect its family, load it. `path` / `family`: already
    resolved / detected by the caller (lastrank serve does both before loading), so neither happens twice.
    `options` go to the family's load (e.g. pack_blocks, compile for jina-v3); unknown ones are a TypeError."""
    from lastrank.model.checkpoint import is_random_checkpoint
    from lastrank.model.loading import parse_dtype, resolve_device
    from lastrank.model.resolve import resolve_checkpoint

    if path is None:
        path = resolve_checkpoint(model, revision=revision, cache_dir=cache_dir)
    module = family_module(family or detect_family(path))
    if dtype is None or str(dtype).lower() == "auto":
        dtype = checkpoint_dtype(path)
    return module.load(path, resolve_device(device), parse_dtype(dtype), model_id=str(model),
                       random_weights=is_random_checkpoint(path), **options)
