"""argparse value types shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import re


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
