"""dtype "auto": the fastest type on this machine whose scores stay within a stated bound of float32.

Why measured and never a table: bf16 matrix products ran ~1.6x faster than float32 on an AMD EPYC Zen 4,
~1.8x SLOWER on an Intel Xeon without AMX, and a CPU with AMX (or a GPU) changes the answer again
(docs/benchmarks.md). So `load_auto` decides at load, in two steps, each cached on disk:

1. Speed, once per machine and model shape (`measure_speed`): the linear layers of one transformer layer
   at the model's width (q/k/v, the feed-forward up and down projections; 128 token rows) timed in float32
   and in each candidate type, one thread and thread CPU time on a CPU (wall time, synchronised, on a GPU),
   best of a few runs within ~0.3 s (0.4-0.8 s with set-up, once). A candidate is considered only if it is at least MIN_SPEEDUP times
   faster than float32: a lossy type must pay for itself.
2. Drift, once per machine and checkpoint (`score_drift`): the fastest such candidate ranks PROBE (a fixed
   small request) through the real model, and so does float32; the candidate is kept only if no relevance
   score moved by more than BOUND. Any two documents whose float32 scores are more than 2 x BOUND apart
   therefore keep their order. A candidate that fails (or gives a NaN) is never chosen for that
   checkpoint on this machine; float32 is.

The cache is one JSON file (`cache_file`: LASTRANK_CACHE_DIR, else the user cache dir), keyed by the machine's
fingerprint (CPU model name and flags, or the GPU's name; the torch version), so a new machine, a new torch
or a changed checkpoint file measures again. The choice (`DtypeChoice`) is on the backend as
`backend.dtype_choice`: /v1/models shows it, `lastrank serve` logs it, `lastrank rerank` prints it. An
explicit dtype (float32 included) is never overridden: only "auto" comes here.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from lastrank.model.checkpoint import read_config
from lastrank.types import RerankRequest

log = logging.getLogger("lastrank.dtype")

# measured against float32, in this order of preference on a tie. Not int8: quantization is opt-in
# (`--dtype int8`, with its drift published in docs/benchmarks.md), and on the real MiniLM its largest score
# change (0.032 over 200 TREC passages) is above BOUND anyway, while bf16's is 0.003.
CANDIDATES = ("bfloat16", "float16")
MIN_SPEEDUP = 1.15  # float32 time / candidate time a candidate must reach
BOUND = 0.02  # max |relevance_score difference| from float32 on PROBE
PROBE_BUDGET_S = 0.3  # the speed probe's time, all types together (more for a very wide model)
PROBE_ROWS = 128  # token rows of the probe's products
CACHE_VERSION = 1  # bump when the probe changes meaning: old entries are then ignored

PROBE_QUERY = "how do vaccines teach the immune system to recognise a virus"
PROBE_DOCUMENTS = (
    "Vaccines expose the immune system to a harmless piece or copy of a pathogen, so that B cells and T cells "
    "learn to recognise it and respond faster to the real infection.",
    "An mRNA vaccine carries instructions for a viral protein; cells make the protein and the immune system "
    "builds antibodies against it.",
    "The stock market closed higher on Friday after the central bank left interest rates unchanged.",
    "Green tea is brewed from the leaves of Camellia sinensis and contains caffeine and catechins.",
    "Memory cells formed after vaccination can persist for years and recognise the virus on a later exposure.",
    "The recipe calls for two cups of flour, a pinch of salt and a tablespoon of olive oil.",
    "Herd immunity occurs when enough of a population is immune that an infection cannot spread easily.",
    "The football match was postponed because of heavy rain and a waterlogged pitch.",
)

_probe_lock = threading.Lock()  # torch.set_num_threads is process-wide: one probe at a time


@dataclass
class DtypeChoice:
    """What a backend runs in and why; `as_dict` is what /v1/models shows."""

    requested: str  # "auto" or the explicit dtype
    dtype: str  # what runs
    reason: str  # one line, for logs and the CLI
    speedup: dict[str, float] = field(default_factory=dict)  # candidate -> float32 time / its time (the probe)
    drift: float | None = None  # max |relevance difference| from float32 on PROBE (None: not measured)
    bound: float = BOUND
    cached: bool = False  # read from the cache file rather than measured in this process
    warning: str | None = None  # one line the CLI and the server print (e.g. int8 on a CPU where it does not pay)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.requested != "auto":
            return f"dtype {self.dtype} (as requested)"
        return f"dtype auto -> {self.dtype}: {self.reason}"


def explicit(dtype: str, warning: str | None = None) -> DtypeChoice:
    return DtypeChoice(requested=dtype, dtype=dtype, reason="as requested", warning=warning)


# ------------------------------------------------------------------------------------------ the machine


def fingerprint(device) -> dict:
    """What the speed of a dtype depends on: the processor (model name and instruction-set flags, or the
    GPU's name and compute capability) and the torch build."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(index),
                "capability": list(torch.cuda.get_device_capability(index)), "torch": torch.__version__}
    name, flags = cpu_info()
    return {"device": device.type, "cpu": name, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "torch": torch.__version__}  # device.type: "cpu", or "mps" (Apple's GPU, named by its chip)


def cpu_info() -> tuple[str, str]:
    """(the processor's model name, its instruction-set flags sorted and space-separated) from /proc/cpuinfo;
    elsewhere (name from the platform module, no flags). Also what benchmarks print beside their figures."""
    name, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:  # x86, arm
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True).encode()).hexdigest()[:32]


def cache_file() -> Path:
    """LASTRANK_CACHE_DIR/dtype-auto.json, else the user cache dir's (~/.cache/lastrank on Linux)."""
    folder = os.environ.get("LASTRANK_CACHE_DIR")
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("lastrank", appauthor=False)
    return Path(folder) / "dtype-auto.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, value: dict) -> None:
    """Merge one entry in; written to a temporary file and renamed, so a reader never sees half a file. A
    cache that cannot be written only means measuring again next time."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = value
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the dtype cache %s: %s", path, e)


# ------------------------------------------------------------------------------------------ step 1: speed


def model_shape(config: dict) -> tuple[int, int]:
    """(hidden size, feed-forward size) from config.json (a multimodal config's text_config too); capped so
    that the probe of a very wide model stays short (the ratio between types is what is measured)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    hidden = config.get("hidden_size") or text.get("hidden_size") or 1024
    inner = config.get("intermediate_size") or text.get("intermediate_size") or 4 * hidden
    return min(int(hidden), 2048), min(int(inner), 8192)


def measure_speed(hidden: int, inner: int, device, dtypes: tuple[str, ...] = ("float32", *CANDIDATES),
                  budget_s: float = PROBE_BUDGET_S) -> dict[str, float]:
    """Seconds of one layer's linear products (best of several) per dtype, on `device`. On a CPU: one
    thread, thread CPU time (load on the machine barely moves it). A type far slower than float32 (no
    kernels for it here) is timed once and left."""
    import torch
    import torch.nn.functional as F

    # Dense products take the same time whatever the values; constant weights skip generating ~30M random
    # numbers for a wide model (a good part of the probe's cost).
    base = {"x": torch.randn(PROBE_ROWS, hidden, generator=torch.Generator().manual_seed(0)),
            "qkv": torch.full((3 * hidden, hidden), 0.02), "up": torch.full((inner, hidden), 0.02),
            "down": torch.full((hidden, inner), 0.02)}
    gpu = device.type != "cpu"  # a GPU (cuda, mps): wall time after its queue is done; no thread setting

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter() if gpu else time.thread_time()

    times: dict[str, float] = {}
    with _probe_lock, torch.inference_mode():
        threads = torch.get_num_threads()
        if not gpu:
            torch.set_num_threads(1)
        try:
            for name in dtypes:
                dt = getattr(torch, name)
                t = {k: v.to(device=device, dtype=dt) for k, v in base.items()}

                def layer():
                    F.linear(t["x"], t["qkv"])
                    F.linear(F.linear(t["x"], t["up"]), t["down"])

                layer()  # first use: kernel selection, JIT code generation
                best, spent = math.inf, 0.0
                while spent < budget_s / len(dtypes) or best == math.inf:
                    start = clock()
                    layer()
                    took = clock() - start
                    best, spent = min(best, took), spent + took
                    if name != "float32" and best > 4 * times.get("float32", math.inf):
                        break
                times[name] = best
        finally:
            if not gpu:
                torch.set_num_threads(threads)
    return times


def speed_of(config: dict, device, machine: dict) -> tuple[dict[str, float], bool]:
    """(candidate -> float32 time / its time, read from the cache?). `machine`: fingerprint(device)."""
    hidden, inner = model_shape(config)
    key = _key("speed", machine, hidden, inner)
    entry = _read_cache().get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), dict):
        return {k: float(v) for k, v in entry["speedup"].items()}, True
    times = measure_speed(hidden, inner, device)
    speedup = {name: round(times["float32"] / times[name], 3) for name in CANDIDATES if times.get(name)}
    log.info("dtype probe (%s, hidden %d, feed-forward %d): seconds %s", machine.get("cpu") or machine.get("gpu"),
             hidden, inner, {k: round(v, 5) for k, v in times.items()})
    _write_cache(key, {"speedup": speedup, "seconds": times, "shape": [hidden, inner],
                       "machine": machine, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return speedup, False


# ------------------------------------------------------------------------------------------ step 2: drift


def probe_scores(backend) -> list[float]:
    """PROBE's relevance scores, by document index."""
    result = backend.rerank(RerankRequest(query=PROBE_QUERY, documents=list(PROBE_DOCUMENTS)))
    scores = [math.nan] * len(PROBE_DOCUMENTS)
    for r in result.results:
        scores[r.index] = float(r.relevance_score)
    return scores


def score_drift(reference: list[float], candidate: list[float]) -> float:
    """max |difference|; infinite when any score is not a number (an overflow in the candidate type)."""
    diffs = [abs(a - b) for a, b in zip(reference, candidate)]
    return math.inf if any(math.isnan(d) for d in diffs) or len(diffs) != len(reference) else max(diffs, default=0.0)


def checkpoint_identity(folder: Path) -> list:
    """The checkpoint as the cache knows it: its folder and each weight file's size and modification time."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return [str(folder.resolve()), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]]


# ------------------------------------------------------------------------------------------ the decision


def load_auto(load: Callable[[str], object], folder: Path, device, config: dict | None = None) -> object:
    """Load with dtype "auto": `load(dtype_name) -> Backend` is the family's loader. Returns the backend in the
    chosen type, with `dtype_choice` set. The candidates fast enough are tried fastest first; the first whose
    drift is within BOUND wins. Memory: the float32 model that gives the reference scores is released before
    a candidate is loaded, so the peak is one float32 model. `config`: config.json as the caller already
    parsed it (family detection), so that a load reads it once; the machine's fingerprint is taken once."""
    machine = fingerprint(device)
    speedup, cached = speed_of(config if config is not None else read_config(folder), device, machine)
    faster = sorted(((s, -CANDIDATES.index(n), n) for n, s in speedup.items() if s >= MIN_SPEEDUP), reverse=True)
    if not faster:
        shown = ", ".join(f"{n} {s:.2f}x" for n, s in speedup.items())
        return _with(load("float32"), DtypeChoice(
            "auto", "float32", f"no type is >= {MIN_SPEEDUP}x float32's speed here ({shown})",
            speedup=speedup, cached=cached))
    expected: list[float] | None = None
    refused = []
    for ratio, _, candidate in faster:
        key = _key("drift", machine, checkpoint_identity(folder), candidate)
        entry = _read_cache().get(key)
        backend = None
        if isinstance(entry, dict) and "drift" in entry:  # None: the candidate failed (not a number)
            drift = math.inf if entry["drift"] is None else float(entry["drift"])
        else:
            cached = False
            if expected is None:
                reference = load("float32")
                expected = probe_scores(reference)
                del reference
                gc.collect()
            try:
                backend = load(candidate)
                drift = score_drift(expected, probe_scores(backend))
            except Exception as e:  # e.g. a kernel missing for this type here: not a choice, float32 is
                log.warning("dtype auto: %s failed on %s: %s", candidate, folder, e)
                backend, drift = None, math.inf
            _write_cache(key, {"drift": drift if math.isfinite(drift) else None, "candidate": candidate,
                               "checkpoint": str(folder)})
        if drift <= BOUND:
            choice = DtypeChoice("auto", candidate, f"{ratio:.2f}x float32's speed here; scores within "
                                 f"{drift:.4f} of float32 (bound {BOUND})", speedup=speedup, drift=drift, cached=cached)
            return _with(backend if backend is not None else load(candidate), choice)
        del backend
        gc.collect()
        moved = f"{drift:.4f}" if math.isfinite(drift) else "not a number (or it failed)"
        refused.append(f"{candidate} is {ratio:.2f}x faster but moved scores by {moved}")
    return _with(load("float32"), DtypeChoice("auto", "float32", "; ".join(refused) + f" (bound {BOUND})",
                                              speedup=speedup, cached=cached))


def _with(backend, choice: DtypeChoice):
    backend.dtype_choice = choice
    log.info("%s", choice.describe())
    return backend
