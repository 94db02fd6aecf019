"""Resolve a hub id or a local folder to a checkpoint folder, and load it.

Hub ids go through huggingface_hub's cache. Offline (HF_HUB_OFFLINE=1, or a hub that cannot be reached
within a couple of seconds) with no cached copy is one clear error, never a long hang.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from lastrank.errors import ModelNotAvailableError
from lastrank.model.config import ModelConfig
from lastrank.model.modeling import JinaForRanking, enable_compile, fuse_projections

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HUB_PATTERNS = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16 or float32") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelNotAvailableError(f"device {device!r} requested but CUDA is not available here")
    return dev


def _check_folder(path: Path) -> Path:
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{path} is not a jina-reranker-v3 checkpoint folder: missing {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED_FILES)}, tokenizer_config.json)"
        )
    return path


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

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        return _check_folder(Path(snapshot_download(text, revision=revision, cache_dir=cache_dir,
                                                    allow_patterns=HUB_PATTERNS, local_files_only=True)))
    except (LocalEntryNotFoundError, ModelNotAvailableError):
        pass
    hint = (f"No complete cached copy of {text!r} in {cache}. Download it where the hub is reachable "
            f"(`hf download {text}`) and copy the cache, or pass a local folder in the official "
            f"layout: --model /path/to/jina-reranker-v3 (config.json, model.safetensors, tokenizer.json, "
            f"tokenizer_config.json).")
    if constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(f"HF_HUB_OFFLINE is set. {hint}")
    # A plain hub call with no network hangs for most of a minute before failing; probe first.
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelNotAvailableError(f"the model hub {constants.ENDPOINT} is not reachable. {hint}")
    try:  # downloads with huggingface_hub's progress bars
        return _check_folder(Path(snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS)))
    except Exception as e:  # network, auth, missing repo: all "cannot have this model"
        raise ModelNotAvailableError(f"could not download {text!r}: {e}. {hint}") from e


def load_model(path: Path, device: torch.device, dtype: torch.dtype, fuse: bool = True,
               compile: bool | None = None) -> JinaForRanking:
    """Strict load of the official tensor names; built on the meta device so nothing is allocated twice.

    fuse: concatenate q/k/v and gate/up weights for the fast path (`modeling.fuse_projections`).
    compile: opt-in torch.compile of the layers (`modeling.enable_compile`); None reads the environment
    variable LASTRANK_COMPILE (1/true/yes). Off by default: the first compile costs tens of seconds.
    """
    from safetensors.torch import load_file

    cfg = ModelConfig.from_file(path / "config.json")
    state = load_file(str(path / "model.safetensors"), device=str(device))
    state.pop("lm_head.weight", None)  # tied to embed_tokens; the reranker has no LM head
    for name in ("projector.0.weight", "projector.2.weight"):
        if name not in state:
            raise ModelNotAvailableError(f"{path / 'model.safetensors'} has no {name}: not a jina-reranker-v3 checkpoint")
    with torch.device("meta"):
        model = JinaForRanking(cfg, projector_hidden=state["projector.0.weight"].shape[0],
                               projector_out=state["projector.2.weight"].shape[0])
    state = {k: v.to(dtype) for k, v in state.items()}  # no copy when the dtype already matches
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelNotAvailableError(f"{path / 'model.safetensors'} does not match config.json: {e}") from e
    del state  # the model holds the tensors now; dropping the dict lets fusion free each old weight
    model = model.eval().requires_grad_(False)
    if fuse:
        # After the strict load by official names; the official parameters become views of the fused
        # matrices, so state_dict() is unchanged and no weight is stored twice.
        fuse_projections(model)
    if compile is None:
        compile = os.environ.get("LASTRANK_COMPILE", "").strip().lower() in ("1", "true", "yes", "on")
    if compile:
        enable_compile(model)
    return model
