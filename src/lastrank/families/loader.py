"""`load_backend`: a model (hub id, short name or folder) -> its family's loaded `Backend`.

The registry's one step that needs torch (a device, a dtype), so it sits beside the torch-free table
(families/__init__.py), which names it as data (`Lazy`) like each family's own `load`.
"""

from __future__ import annotations

from pathlib import Path

from lastrank.engine import dtype_choice
from lastrank.families import detect_family, family_spec, folder_facts
from lastrank.model import loading  # read at each call: tests/support/device_switch.py redirects resolve_device
from lastrank.model.checkpoint import is_random_checkpoint
from lastrank.model.int8 import refuse_unless_int8, speed_note
from lastrank.model.resolve import resolve_checkpoint


def load_backend(model: str | Path, device: str | None = "cpu", dtype: str | None = "auto", revision: str | None = None,
                 cache_dir: str | None = None, *, path: Path | None = None, family: str | None = None, **options):
    """Resolve `model` (hub id, short name or folder), detect its family, load it. `path` / `family`: already
    resolved / detected by the caller (lastrank serve does both before loading), so neither happens twice.
    `options` go to the family's load (e.g. pack_blocks, compile for jina-v3); unknown ones are a TypeError.
    dtype "auto" (or None): the fastest type on this machine whose scores stay within a stated bound of
    float32's, measured once and cached (engine/dtype_choice.py); `backend.dtype_choice` says what and why."""
    if path is None:
        path = resolve_checkpoint(model, revision=revision, cache_dir=cache_dir)
    config = None if family else folder_facts(path)[0]  # parsed once: detection, then dtype auto's probe shape
    spec = family_spec(family or detect_family(path, config))
    warning = None
    if str(dtype).lower() == "int8":  # opt-in, for the encoder families only: refused here, in one line
        refuse_unless_int8(spec.name)
        warning = speed_note()  # said where int8 does not pay on this CPU (no VNNI)
    device = loading.resolve_device(device)

    def load(dtype):
        return spec.load(path, device, loading.parse_dtype(dtype), model_id=str(model),
                         random_weights=is_random_checkpoint(path), **options)

    if dtype is None or str(dtype).lower() == "auto":  # measured on this machine: engine/dtype_choice.py
        return dtype_choice.load_auto(load, path, device, config)
    backend = load(dtype)  # an explicit type, float32 included, is never overridden
    backend.dtype_choice = dtype_choice.explicit(str(dtype).removeprefix("torch.").lower(), warning)
    return backend
