"""Load a model folder (dtype, device, the checkpoint reader).

Resolving a hub id or a folder (`resolve_checkpoint`) lives in resolve.py, torch-free, and is re-exported
here.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lastrank.errors import InvalidRequestError, ModelNotAvailableError
from lastrank.model.config import ModelConfig
from lastrank.model.fusion import enable_compile, fuse_projections
from lastrank.model.jina import JinaForRanking

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


_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def fused_groups(cfg: ModelConfig) -> list[list[str]]:
    """The official tensor names that fuse_projections concatenates, in its order."""
    groups = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        groups.append([p + f"self_attn.{x}_proj.weight" for x in "qkv"])
        groups.append([p + f"mlp.{x}_proj.weight" for x in ("gate", "up")])
    return groups


READ_PIECE_BYTES = 32 << 20


def read_safetensors(file: Path, dtype: torch.dtype, groups: list[list[str]] = (), skip: tuple[str, ...] = (),
                     threads: int | None = None) -> dict:
    """Every tensor of a .safetensors file in memory of its own, in `dtype`, read with plain reads.

    Why not safetensors' load_file: it maps the file, so the pages it touches stay in this process's RSS for
    as long as any tensor of the file lives, and fusing then adds copies on top: 2.77 GB peak RSS for a 2K
    block with the full-size model. Reading straight into place costs one copy (from the page cache) and
    leaves nothing mapped. The tensors of each group in `groups` land as consecutive row blocks of one
    buffer, so fuse_projections uses them as they are, without a second copy.
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


def load_model(path: Path, device: torch.device, dtype: torch.dtype, fuse: bool = True,
               compile: bool | None = None) -> JinaForRanking:
    """Strict load of the official tensor names; built on the meta device so nothing is allocated twice.

    fuse: concatenate q/k/v and gate/up weights for the fast path (`fusion.fuse_projections`); the reader
    already places them side by side, so fusing copies nothing on CPU.
    compile: opt-in torch.compile of the layers (`fusion.enable_compile`); None reads the environment
    variable LASTRANK_COMPILE (1/true/yes). Off by default: the first compile costs tens of seconds.
    """
    cfg = ModelConfig.from_file(path / "config.json")
    # lm_head.weight is tied to embed_tokens; the reranker has no LM head: never read
    state = read_safetensors(path / "model.safetensors", dtype, fused_groups(cfg) if fuse else (), skip=("lm_head.weight",))
    for name in ("projector.0.weight", "projector.2.weight"):
        if name not in state:
            raise ModelNotAvailableError(f"{path / 'model.safetensors'} has no {name}: not a jina-reranker-v3 checkpoint")
    if device.type != "cpu":
        state = _to_device(state, device)
    with torch.device("meta"):
        model = JinaForRanking(cfg, projector_hidden=state["projector.0.weight"].shape[0],
                               projector_out=state["projector.2.weight"].shape[0])
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelNotAvailableError(f"{path / 'model.safetensors'} does not match config.json: {e}") from e
    del state
    model = model.eval().requires_grad_(False)
    if fuse:
        # After the strict load by official names; the official parameters are (or become) views of the
        # fused matrices, so state_dict() is unchanged and no weight is stored twice.
        fuse_projections(model)
    if compile is None:
        compile = os.environ.get("LASTRANK_COMPILE", "").strip().lower() in ("1", "true", "yes", "on")
    if compile:
        enable_compile(model)
    return model


def _to_device(state: dict, device: torch.device) -> dict:
    """Move to the device keeping views of one buffer views of one (moved) buffer."""
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
