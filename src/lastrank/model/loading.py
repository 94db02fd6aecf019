"""The dtype and device a model is loaded in, from their user-facing spellings, checked before any weight is
read. Reading and loading the weights is weights.py's; resolving a hub id or a folder is resolve.py's.
"""

from __future__ import annotations

import torch

from lastrank.errors import InvalidRequestError, ModelNotAvailableError

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16,
          # the opt-in int8 path of the encoder families (model/int8.py): int8 linear layers, float32 rest
          "int8": torch.int8}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float32 or int8") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" / None: cuda when there is one, else cpu. Checked before any weight is read: a device torch
    does not know (e.g. "gpu") is an InvalidRequestError, one lastrank cannot use here a ModelNotAvailableError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidRequestError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelNotAvailableError(f"device {device!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelNotAvailableError(f"device {device!r} requested but this machine has "
                                         f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelNotAvailableError(f"device {device!r} requested but MPS is not available here")
    elif dev.type != "cpu":
        raise InvalidRequestError(f"device {device!r} is not one lastrank runs on; use cpu, cuda, cuda:N or auto")
    return dev
