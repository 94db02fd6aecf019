"""argparse value types shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import fields

from lastrank.errors import InvalidRequestError
from lastrank.types import RerankOptions


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port: 0-65535 (0: the system picks a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: a free port), got {value}")
    return value


def device(text: str) -> str:
    """A device lastrank runs on: cpu, cuda, cuda:N, mps or auto (the spelling only; model/loading.py's
    resolve_device says whether this machine has it)."""
    value = text.strip().lower()
    if not re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:N, mps or auto)")
    return value


# RerankOptions fields whose flag is not named after them (every other option's flag is --<its name>, dashed)
OPTION_FLAGS = {"return_spans": "spans"}


def rerank_options(args: argparse.Namespace) -> dict:
    """The RerankOptions a subcommand's flags set, by field name (each flag's dest is the field's name, but for
    OPTION_FLAGS), None included (the default); a field the subcommand has no flag for is left out. Chunk-mode
    flags without --chunking chunk are an InvalidRequestError naming them."""
    options = {f.name: getattr(args, OPTION_FLAGS.get(f.name, f.name)) for f in fields(RerankOptions)
               if hasattr(args, OPTION_FLAGS.get(f.name, f.name))}
    chunk_only = [f.name for f in fields(RerankOptions) if f.metadata.get("chunk_mode") and f.name in options]
    if options.get("chunking") != "chunk" and any(options[name] not in (None, False) for name in chunk_only):
        flags = [f"--{OPTION_FLAGS.get(name, name).replace('_', '-')}" for name in chunk_only]
        said = flags[0] + " needs" if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1] + " need"
        raise InvalidRequestError(f"{said} --chunking chunk")
    return options
