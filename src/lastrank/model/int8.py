"""int8 encoders (opt-in, dtype "int8"): the linear layers of a packed BERT / XLM-R encoder as int8 matrix
products, everything else (embeddings, LayerNorm, attention, GELU, the heads) in float32.

What is quantized, and how:
  - weights: int8, symmetric, one scale per output channel (row), from the float32 weights at load
    (per-channel, not per-tensor: one outlier row then costs only its own precision);
  - activations: quantized dynamically, one scale per token row (symmetric around zero: the row divided by
    its largest |value|), so a row's int8 values, and therefore a passage's score, do not depend on what it
    is packed with;
  - the product: a u8 x s8 -> s32 kernel with float32 out (engine(): oneDNN's `onednn::qlinear_pointwise` fed
    u8 activations quantized here, fbgemm's `quantized::linear_with_input_q_dq_qweight_dq_output_fp32`, or
    oneDNN's `quantized::linear_dynamic`), and the row's scale and the bias applied in float32 after it, in
    place.
A BERT layer's query, key and value run as one product (`BertSelfAttention.fuse_qkv`): with per-channel weights
and per-row scales that is the three products' numbers, for one pass over the activations instead of three.
Only the encoder layers' q/k/v, attention-output, intermediate and output projections are quantized: the
embeddings, every LayerNorm and the classification head (XLM-R's `classifier`, a [hidden, hidden] and a
[hidden, 1] product run on one row per pair) stay in float32, where they cost nothing and where the score is
made.

Per-row scales through a per-tensor kernel: the kernel quantizes its whole input on one grid. Each row is
first divided by its own largest |value| (so lies in [-1, 1]) and the grid is fixed: GRID, zero point 128,
the grid `linear_dynamic` picks for the range [-RANGE, RANGE] (a row times the reciprocal of its largest
|value| can round up to 1 + 2**-23, so RANGE is a hair over 1). Each row is then in effect quantized with its
own scale, and multiplying the row's output by that scale undoes the division. `qlinear_pointwise` takes u8
activations and their grid: `torch.quantize_per_tensor` makes them in one vectorised pass (rounding as fbgemm
does, so the three engines give the same numbers); fbgemm's op takes the float rows and the grid and quantizes
inside; `linear_dynamic` finds the grid from the input's minimum and maximum, so there one extra row holding
+RANGE and -RANGE pins it. (Quantizing by hand in eager arithmetic, scale, round, clamp, cast, would be 3-4
passes over memory, as slow as the product it feeds, and torch's CPU `_int_mm` has no fast kernel:
docs/benchmarks.md, "int8".) The extra work is one pass to find each row's largest value, one multiply (and
for `qlinear_pointwise` the quantizing pass) and one multiply-add on the output.

Two choices are made from the CPU's instruction set (torch's own detection, `torch.cpu.get_capabilities`):
  - without VNNI (AVX2, AVX-VNNI, AVX-512 without VNNI: has_vnni), a u8 x s8 product sums pairs of products in 16 bits, which
    saturate for full-range operands (measured: errors of 0.5 on outputs of size ~1, on an AMD Zen 3), so
    the weights are quantized to 7 bits there (|q| <= 63: 2 x 255 x 63 fits in 16 bits) and the activations
    keep 8 (measured: 30% less error than PyTorch's usual remedy, `reduce_range`'s 7-bit activations); with
    VNNI or AMX the product sums in 32 bits and the weights keep 8 bits;
  - the engine: oneDNN's `linear_dynamic` where the CPU has AMX (measured 2.5x fbgemm's speed on an AMX
    Xeon); without VNNI, oneDNN's `qlinear_pointwise` on u8 activations quantized here (on an AVX2 Zen 3 whole
    reranks ran 1.05-1.11x faster than on fbgemm, best of rounds, MiniLM and the bge-reranker-v2-m3 shape, the
    same scores bit for bit; `linear_dynamic` there ran at half fbgemm's speed); else fbgemm (a CPU with VNNI
    but no AMX was not measured).
`speed_note()` says in one line where int8 runs with 7-bit weights (no VNNI), and what it measured there.

torch 2.13 warns that its quantized-tensor API (used here once per weight, at load) will be removed; the
warning is silenced here because it is about that API, not about this use, and `available()` says plainly
where the engine is missing. float32 and bfloat16 are untouched by this module.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import nn

from lastrank.errors import ModelNotAvailableError
from lastrank.model.bert import BertSelfAttention

# The families with an int8 path (FamilySpec names): BERT bi-encoders and XLM-R cross-encoders.
FAMILIES = ("bi-encoder", "cross-encoder")
RANGE = 1 + 2**-20  # the pinned activation range of every call, [-RANGE, RANGE] (Int8Linear)
# The u8 grid that range gives (what linear_dynamic picks for [-RANGE, RANGE]: 255 steps, zero at 128): a row
# scaled into [-1, 1] lands on 1..255.
GRID, GRID_ZERO = 2 * RANGE / 255, 128


@functools.cache
def cpu_capabilities() -> dict:
    """torch's view of this CPU's instruction sets ({} where this torch cannot say)."""
    try:
        return dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        return {}


def has_vnni() -> bool:
    """u8 x s8 products summed in 32 bits by the kernels this module uses: fbgemm's AVX-512 VNNI ones, or
    oneDNN's with AMX. Not AVX-VNNI (the 256-bit form, on CPUs without AVX-512 such as Intel Alder Lake):
    fbgemm has no kernels for it and runs its saturating AVX2 ones there, so such a CPU gets 7-bit weights
    (with 8-bit ones, simulated here: errors of 0.56 on outputs of size ~1, against 0.03)."""
    caps = cpu_capabilities()
    return any(caps.get(f) for f in ("avx512_vnni", "amx_int8"))


def engine() -> str:
    """The int8 product for this CPU (module docstring): "onednn" (`linear_dynamic`) with AMX, "onednn-u8"
    (`qlinear_pointwise` on u8 quantized here) without VNNI, else "fbgemm"."""
    supported = torch.backends.quantized.supported_engines
    if cpu_capabilities().get("amx_int8") and "onednn" in supported:
        return "onednn"
    if not has_vnni() and torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return "onednn-u8"
    return "fbgemm" if "fbgemm" in supported else "onednn"


def available() -> str | None:
    """None when int8 can run here, else why not (one line)."""
    supported = torch.backends.quantized.supported_engines
    if engine() not in (*supported, "onednn-u8"):
        return (f"this torch build has neither the fbgemm nor the onednn quantized engine (supported: "
                f"{', '.join(supported)})")
    return None


def speed_note() -> str | None:
    """One line where int8 runs with 7-bit weights (no VNNI: the products sum pairs in 16 bits, see the module
    docstring), else None. On such a CPU (AMD Zen 3, AVX2) the real MiniLM ran 1.3-1.5x float32's speed in int8,
    1.0-1.2x ONNX Runtime's dynamic int8, while its scores drift (docs/benchmarks.md, "int8 on AMD Zen 3")."""
    if has_vnni():
        return None
    return ("dtype int8: this CPU has no AVX-512 VNNI or AMX (avx512_vnni, amx_int8), so int8 runs with 7-bit "
            "weights; measured 1.3-1.5x float32's speed on such a CPU, with drift (docs/benchmarks.md, int8); float32 "
            "keeps the exact scores")


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
    """nn.Linear with per-channel int8 weights and per-row dynamically quantized activations; float32 in and
    out. A row's output depends only on that row (module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features < 2:
            raise ValueError("Int8Linear needs at least 2 input features (its range row holds +1 and -1)")
        w = linear.weight.detach().float()
        self.bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.engine, self.weight_max = engine(), (127 if has_vnni() else 63)  # 63: no 16-bit saturation (docstring)
        scales = (w.abs().amax(dim=1) / self.weight_max).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice of the quantized-tensor API (docstring)
            qw = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
            if self.engine == "onednn-u8":  # the bias is added after the scale, by every engine
                # torch warns once per process, so the one call in forward() that uses this API warns here
                torch.quantize_per_tensor(torch.zeros(1), GRID, GRID_ZERO, torch.quint8)
                self._packed = torch.ops.onednn.qlinear_prepack(qw.int_repr(), None)
                self._weight_scales = qw.q_per_channel_scales().float()
                self._weight_zeros = torch.zeros(self.out_features, dtype=torch.int32)
            else:
                with _engine(self.engine):
                    self._packed = torch.ops.quantized.linear_prepack(qw, None)
        if self.engine == "onednn":
            # linear_dynamic takes no grid (qlinear_pointwise and fbgemm's op do): it gets it through an extra
            # row that pins every call's range (module docstring): a row times the reciprocal of its largest
            # |value| can round up to 1 + 2**-23, so the pinned range is a hair wider.
            self._range_row = torch.zeros(1, self.in_features)
            self._range_row[0, :2] = torch.tensor([RANGE, -RANGE])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()
        rows = flat.shape[0]
        # each row's largest |value|; amax and amin (vectorised) are ~9x faster than torch.aminmax over rows
        # here, and need no |x| tensor
        scale = torch.maximum(flat.amax(dim=1, keepdim=True), flat.amin(dim=1, keepdim=True).neg_()).clamp_min_(1e-30)
        inverse = scale.reciprocal()  # rows into [-1, 1] by a product, not a division: 2x cheaper here
        if self.engine == "onednn":
            unit = torch.empty(rows + 1, self.in_features)
            torch.mul(flat, inverse, out=unit[:rows])
            unit[rows:] = self._range_row
            out = torch.ops.quantized.linear_dynamic(unit, self._packed, False)[:rows]  # False: 8-bit activations
        elif self.engine == "onednn-u8":
            out = self._qlinear_u8(flat * inverse)
        else:  # fbgemm, given the grid
            out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(flat * inverse, GRID, GRID_ZERO,
                                                                                    self._packed)
        # the row's scale and the bias, in place (a new [rows, out] tensor per call is fresh memory to fault in)
        out = out.mul_(scale) if self.bias is None else torch.addcmul(self.bias, out, scale, out=out)
        return out.reshape(*shape[:-1], self.out_features)

    def _qlinear_u8(self, unit: torch.Tensor) -> torch.Tensor:
        """oneDNN's u8 x s8 product of rows scaled into [-1, 1], float32 out (without the row scales). The u8
        values are quantize_per_tensor's (one vectorised pass, rounding as fbgemm's op does inside: the same
        numbers), read as a plain uint8 tensor over the same storage (int_repr() would copy them). Why not
        fbgemm's op, which quantizes inside: on an AVX2 Zen 3 this product, quantizing included, ran 1.01-1.08x
        fbgemm's at XLM-R's shapes (512 rows; 0.94-1.07x at MiniLM's), and whole reranks 1.05-1.11x
        (docs/benchmarks.md, "oneDNN's product without VNNI")."""
        q = torch.quantize_per_tensor(unit, GRID, GRID_ZERO, torch.quint8)
        u8 = torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())
        return torch.ops.onednn.qlinear_pointwise(u8, GRID, GRID_ZERO, self._packed, self._weight_scales,
                                                  self._weight_zeros, None, 1.0, 0, torch.float32, "none", [], "")

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 weight [out, in] and its per-channel scales (symmetric: zero points 0), from the packed
        form of whichever engine holds it (one copy is kept)."""
        if self.engine == "onednn-u8":
            return self._packed.to_dense().t(), self._weight_scales
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the quantized-tensor API's deprecation notice (module docstring)
            qw, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qw.int_repr(), qw.q_per_channel_scales().float()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel weights, "
                f"per-row activations, {8 if self.weight_max == 127 else 7}-bit weights ({self.engine})")


def quantize_linears(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear inside `module` (an encoder's stack of layers) by an Int8Linear, in place. The
    weights must be float32 (they are quantized from it)."""
    if (why := available()) is not None:
        raise ModelNotAvailableError(f"dtype int8: {why}")
    for layer in module.modules():
        if isinstance(layer, BertSelfAttention):
            layer.fuse_qkv()  # one product for q, k and v (BertSelfAttention.fuse_qkv)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return module


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def check_int8(device: torch.device, family: str = "") -> None:
    """One clear error where the int8 path cannot run: a non-CPU device, or no quantized engine."""
    if device.type != "cpu":
        raise ModelNotAvailableError(f"dtype int8 runs on CPU only (fbgemm / oneDNN); got device {device} (use bfloat16 "
                                     f"on a GPU)")
    if (why := available()) is not None:
        raise ModelNotAvailableError(f"dtype int8: {why}")


def refuse_unless_int8(family: str) -> None:
    """dtype "int8" for a family without an int8 path: one line, at load."""
    if family not in FAMILIES:
        raise ModelNotAvailableError(f"dtype int8 is implemented for the {' and '.join(FAMILIES)} families only; "
                                     f"this model is {family} (use bfloat16 or float32)")
