"""int8 encoders (opt-in, dtype "int8"): the linear layers of a packed BERT / XLM-R encoder as int8 matrix
products, everything else (embeddings, LayerNorm, attention, GELU, the heads) in float32.

What is quantized, and how:
  - weights: int8, symmetric, one scale per output channel (row), from the float32 weights at load
    (per-channel, not per-tensor: one outlier row then costs only its own precision);
  - activations: quantized dynamically, per call, over the whole [T, in] input (one scale and zero point,
    asymmetric uint8), inside the kernel;
  - the product: torch's `quantized::linear_dynamic` on the oneDNN engine (u8 x s8 -> s32 on AVX-512 VNNI,
    or AMX where the CPU has it), float32 out, bias added in float32.
Only the encoder layers' q/k/v, attention-output, intermediate and output projections are quantized: the
embeddings, every LayerNorm and the classification head (XLM-R's `classifier`, a [hidden, hidden] and a
[hidden, 1] product run on one row per pair) stay in float32, where they cost nothing and where the score is
made.

Packing is kept: attention still runs per sequence, and a linear layer treats every row alike except for
the one activation scale of the call. That scale is set by the call's largest activation, so in int8 a
sequence's output depends slightly on the others packed with it (a rounding grid, not attention: the packed
forward equals one-sequence-at-a-time within int8's rounding; tests/model/test_int8.py bounds it). float32
and bfloat16 are untouched by this module.

Why oneDNN's dynamic linear and not a hand-made quantize + int8 product: quantizing an activation in eager
PyTorch is 3-4 passes over memory (scale, round, clamp, cast), as slow as the int8 product it feeds; the
dynamic kernel quantizes inside the product (docs/benchmarks.md, "int8"). torch 2.13 warns that its
quantized-tensor API (used here once per weight, at load) will be removed; the warning is silenced here
because it is about that API, not about this use, and `available()` says plainly where the engine is missing.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from lastrank.errors import ModelNotAvailableError

ENGINE = "onednn"
# The families with an int8 path (FamilySpec names): BERT bi-encoders and XLM-R cross-encoders.
FAMILIES = ("bi-encoder", "cross-encoder")


def available() -> str | None:
    """None when int8 can run here, else why not (one line)."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        return (f"this torch build has no {ENGINE} quantized engine (supported: "
                f"{', '.join(torch.backends.quantized.supported_engines)})")
    return None


@contextlib.contextmanager
def _engine(name: str):
    """The quantized engine is a process-wide setting read when weights are packed (the packed object then
    carries its kernels); it is set only around packing and restored."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


class Int8Linear(nn.Module):
    """nn.Linear with per-channel int8 weights and dynamically quantized activations; float32 in and out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        bias = linear.bias.detach().float() if linear.bias is not None else None
        scales = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice of the quantized-tensor API (docstring)
            qw = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
            with _engine(ENGINE):
                self._packed = torch.ops.quantized.linear_prepack(qw, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self._packed, False)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_linears(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear inside `module` (an encoder's stack of layers) by an Int8Linear, in place. The
    weights must be float32 (they are quantized from it)."""
    if (why := available()) is not None:
        raise ModelNotAvailableError(f"dtype int8: {why}")
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return module


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def check_int8(device: torch.device, family: str = "") -> None:
    """One clear error where the int8 path cannot run: a non-CPU device, or no oneDNN engine."""
    if device.type != "cpu":
        raise ModelNotAvailableError(f"dtype int8 runs on CPU only (oneDNN); got device {device} (use bfloat16 "
                                     f"on a GPU)")
    if (why := available()) is not None:
        raise ModelNotAvailableError(f"dtype int8: {why}")


def refuse_unless_int8(family: str) -> None:
    """dtype "int8" for a family without an int8 path: one line, at load."""
    if family not in FAMILIES:
        raise ModelNotAvailableError(f"dtype int8 is implemented for the {' and '.join(FAMILIES)} families only; "
                                     f"this model is {family} (use bfloat16 or float32)")
