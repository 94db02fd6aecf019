"""Reading a checkpoint's weights and loading them, strictly, into a model: one loader for every family.

  read_safetensors(file, dtype, groups, skip) -> {name: tensor}   every tensor of one file, read in place
  checkpoint_files(folder) -> [files]                             model.safetensors, or the shards its index lists
  to_device(state, device) -> state                               the one device move (views stay views)
  strict_load(build, state, device, where, fuse=, compile=)       build on meta, load by name, eval, fuse, compile

Every loader (model/jina.py, causal_lm.py, decoder_encoder.py, jina_m0.py, bert.py, xlmr.py) reads its
tensors, renames them to its module's names where its layout needs it, and hands them to `strict_load`:
a checkpoint with a missing, unexpected or wrongly shaped tensor is one ModelNotAvailableError line naming
the file, whatever the family. `strict_load` is also the one place that decides torch.compile
(`compile=None`: the LASTRANK_COMPILE environment variable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.fusion import enable_compile, fuse_projections

INDEX = "model.safetensors.index.json"
COMPILE_ENV = "LASTRANK_COMPILE"  # 1/true/yes/on: torch.compile the layers of the loaders that pass compile=None

_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


READ_PIECE_BYTES = 32 << 20


def read_safetensors(file: Path, dtype: torch.dtype, groups: list[list[str]] = (), skip: tuple[str, ...] = (),
                     threads: int | None = None) -> dict:
    """Every tensor of a .safetensors file in memory of its own, in `dtype`, read with plain reads.

    Why not safetensors' load_file: it maps the file, so the pages it touches stay in this process's RSS for
    as long as any tensor of the file lives, and fusing then adds copies on top: 2.77 GB peak RSS for a 2K
    block with the full-size model. Reading straight into place costs one copy (from the page cache) and
    leaves nothing mapped. The tensors of each group in `groups` land as consecutive row blocks of one
    buffer, so fusion.fuse_projections uses them as they are, without a second copy.
    The reads run in `threads` threads (default: up to 4, one per core), in pieces of 32 MB: positional
    reads release the GIL, and a single thread copying 1.2 GB out of the page cache (and faulting in the
    fresh pages) was most of the load time (docs/benchmarks.md, cold start).
    """
    out: dict[str, torch.Tensor] = {}
    pieces: list[tuple[memoryview, int]] = []  # (destination bytes, file offset)
    casts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (read buffer, destination) where dtypes differ
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        base = 8 + n
        size = os.fstat(f.fileno()).st_size

        def read_into(name: str, dst: torch.Tensor) -> None:
            info = header[name]
            src_dtype = _ST_DTYPES.get(info["dtype"])
            if src_dtype is None:
                raise ModelNotAvailableError(f"{file}: tensor {name} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            tmp = dst if src_dtype == dst.dtype else torch.empty(dst.shape, dtype=src_dtype)
            raw = tmp.view(-1).view(torch.uint8) if tmp.numel() else torch.empty(0, dtype=torch.uint8)
            if raw.numel() != end - start:
                raise ModelNotAvailableError(f"{file}: tensor {name} has {end - start} bytes for shape {info['shape']}")
            if base + end > size:
                raise ModelNotAvailableError(f"{file} is truncated (tensor {name})")
            view = memoryview(raw.numpy())
            for at in range(0, raw.numel(), READ_PIECE_BYTES):
                pieces.append((view[at:at + READ_PIECE_BYTES], base + start + at))
            if tmp is not dst:
                casts.append((tmp, dst))

        for group in groups:
            shapes = [header[name]["shape"] for name in group if name in header]
            if len(shapes) != len(group) or len({tuple(s[1:]) for s in shapes}) != 1 or len(shapes[0]) != 2:
                continue  # not fusable as stored: read one by one below; strict loading reports what is wrong
            fused = torch.empty(sum(s[0] for s in shapes), shapes[0][1], dtype=dtype)
            row = 0
            for name, shape in zip(group, shapes):
                out[name] = fused[row:row + shape[0]]
                read_into(name, out[name])
                row += shape[0]
        for name, info in header.items():
            if name in out or name in skip:
                continue
            out[name] = torch.empty(info["shape"], dtype=dtype)
            read_into(name, out[name])

        fd = f.fileno()
        positional = hasattr(os, "preadv")  # not on Windows: one thread, seek + read

        def read_piece(piece: tuple[memoryview, int]) -> None:
            dst, offset = piece
            done = 0
            while done < len(dst):
                if positional:
                    got = os.preadv(fd, [dst[done:]], offset + done)
                else:
                    f.seek(offset + done)
                    got = f.readinto(dst[done:])
                if not got:
                    raise ModelNotAvailableError(f"{file} is truncated (short read at byte {offset + done})")
                done += got

        threads = (threads or min(4, os.cpu_count() or 1)) if positional else 1
        if threads > 1 and len(pieces) > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(read_piece, pieces))
        else:
            for piece in pieces:
                read_piece(piece)
    for tmp, dst in casts:
        dst.copy_(tmp)
    return out


def checkpoint_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards listed by model.safetensors.index.json (Qwen3-Reranker-4B)."""
    index = path / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelNotAvailableError(f"{path} lists shards it does not have: {', '.join(missing)}")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise ModelNotAvailableError(f"{path} has no model.safetensors (nor {INDEX})")


def weights_file(files: list[Path]) -> Path:
    """The file an error about the weights names: the one file, or the index that lists the shards."""
    return files[0] if len(files) == 1 else files[0].parent / INDEX


def to_device(state: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move to the device keeping views of one buffer views of one (moved) buffer: the fused q/k/v and
    gate/up weights that read_safetensors placed side by side stay side by side, so fusing copies nothing."""
    moved: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in state.items():
        key = t.untyped_storage().data_ptr()
        if t.untyped_storage().nbytes() == t.numel() * t.element_size():
            out[name] = t.to(device)
            continue
        if key not in moved:
            moved[key] = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage()).to(device)
        out[name] = moved[key].as_strided(t.shape, t.stride(), t.storage_offset())
    return out


def compile_wanted(compile: bool | None) -> bool:
    """The caller's choice, or (None) the LASTRANK_COMPILE environment variable. Off by default: the first
    compile costs tens of seconds (fusion.enable_compile)."""
    if compile is None:
        return os.environ.get(COMPILE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return bool(compile)


def strict_load(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], device: torch.device,
                where: Path | str, *, fuse: bool = False, compile: bool | None = False) -> nn.Module:
    """`build()` on the meta device (nothing is allocated twice), then `state` assigned by name, strictly:
    every tensor the model has must be there with its shape, and nothing else; otherwise one
    ModelNotAvailableError line naming `where` (the checkpoint file) and the first offending names.
    Then eval mode without gradients, on `device`.

    fuse: concatenate each decoder layer's q/k/v and gate/up weights (fusion.fuse_projections; a model whose
    backbone is `model.model`); after the strict load by official names, so state_dict() is unchanged.
    compile: torch.compile the decoder layers (fusion.enable_compile); None: LASTRANK_COMPILE decides.
    Loaders whose model has no compiled path pass False.
    """
    if device.type != "cpu":
        state = to_device(state, device)
    with torch.device("meta"):
        model = build()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        found = "; ".join(f"{what} {_first(names)}" for what, names in
                          (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if names)
        raise ModelNotAvailableError(f"{where} does not match the {type(model).__name__} its config describes: {found}")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # what the checks above do not cover; torch's message spans lines
        raise ModelNotAvailableError(f"{where}: {' '.join(str(e).split())}") from e
    del state
    model = model.eval().requires_grad_(False)
    if fuse:
        # The official parameters are (or become) views of the fused matrices: no weight is stored twice.
        fuse_projections(model)
    if compile_wanted(compile):
        enable_compile(model)
    return model


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")
