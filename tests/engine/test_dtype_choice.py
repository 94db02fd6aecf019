"""dtype "auto" (engine/dtype_choice.py): the decision from injected timings and drifts, its cache, and where
it shows; and once on the real all-MiniLM-L6-v2 with this machine's own measured drift."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lastrank.engine import dtype_choice
from lastrank.engine.dtype_choice import BOUND, MIN_SPEEDUP, PROBE_DOCUMENTS, load_auto

CPU = torch.device("cpu")
REFERENCE = [0.9, 0.8, 0.1, 0.05, 0.7, 0.0, 0.5, -0.1]  # float32's scores of PROBE, by index


class FakeBackend:
    """Scores PROBE as `scores[dtype]` (float32: REFERENCE)."""

    def __init__(self, dtype: str, scores: list[float]):
        self.dtype_name = dtype
        self.scores = scores

    def rerank(self, request):
        assert list(request.documents) == list(PROBE_DOCUMENTS)
        return SimpleNamespace(results=[SimpleNamespace(index=i, relevance_score=s) for i, s in enumerate(self.scores)])


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 256}))
    (model / "model.safetensors").write_bytes(b"weights")
    return model


def fake_timings(monkeypatch, seconds: dict[str, float]) -> list:
    calls = []

    def measure(hidden, inner, device, *args, **kwargs):
        calls.append((hidden, inner))
        return dict(seconds)

    monkeypatch.setattr(dtype_choice, "measure_speed", measure)
    return calls


def fake_loader(drift: dict[str, float]):
    """load(dtype) -> FakeBackend whose scores are REFERENCE moved by drift[dtype]; records each load."""
    loads = []

    def load(dtype: str):
        loads.append(dtype)
        return FakeBackend(dtype, [s + drift.get(dtype, 0.0) for s in REFERENCE])

    return load, loads


def test_a_faster_type_within_the_bound_is_chosen(folder, monkeypatch):
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.4, "float16": 0.9})
    load, loads = fake_loader({"bfloat16": 0.004})
    backend = load_auto(load, folder, CPU)
    choice = backend.dtype_choice
    assert backend.dtype_name == choice.dtype == "bfloat16" and choice.requested == "auto"
    assert choice.speedup == {"bfloat16": 2.5, "float16": pytest.approx(1.111, abs=1e-3)}
    assert choice.drift == pytest.approx(0.004) and choice.cached is False
    assert loads == ["float32", "bfloat16"]  # the reference, released, then the candidate kept


def test_float32_when_no_type_is_faster(folder, monkeypatch):
    # An Intel Xeon without AMX: bf16 products ~1.8x slower than float32
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 1.8, "float16": 1.0 / (MIN_SPEEDUP - 0.05)})
    load, loads = fake_loader({})
    backend = load_auto(load, folder, CPU)
    assert backend.dtype_choice.dtype == "float32"
    assert loads == ["float32"]  # nothing else loaded: no drift to measure
    assert "no type is" in backend.dtype_choice.reason


def test_the_cache_answers_the_second_load(folder, monkeypatch):
    calls = fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.5, "float16": 1.0})
    load, loads = fake_loader({"bfloat16": 0.001})
    assert load_auto(load, folder, CPU).dtype_choice.cached is False
    assert len(calls) == 1 and loads == ["float32", "bfloat16"]
    again = load_auto(load, folder, CPU)
    assert len(calls) == 1, "the speed probe ran again"
    assert loads == ["float32", "bfloat16", "bfloat16"], "the drift was measured again"
    assert again.dtype_choice.cached is True and again.dtype_choice.dtype == "bfloat16"
    # a changed checkpoint file is another checkpoint: its drift is measured again (the speed is the machine's)
    (folder / "model.safetensors").write_bytes(b"other weights")
    load_auto(load, folder, CPU)
    assert len(calls) == 1 and loads[3:] == ["float32", "bfloat16"]


def test_a_big_drift_keeps_float32(folder, monkeypatch):
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.3, "float16": 1.0})
    load, loads = fake_loader({"bfloat16": 0.25})
    backend = load_auto(load, folder, CPU)
    assert backend.dtype_choice.dtype == backend.dtype_name == "float32"
    assert "moved scores by 0.2500" in backend.dtype_choice.reason
    assert loads == ["float32", "bfloat16", "float32"]
    # remembered: the next load goes straight to float32
    assert load_auto(load, folder, CPU).dtype_choice.dtype == "float32" and loads[3:] == ["float32"]


def test_a_drift_just_over_the_bound_and_a_nan_both_keep_float32(folder, monkeypatch):
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.3, "float16": 0.5})
    load, loads = fake_loader({"bfloat16": BOUND * 1.5, "float16": math.nan})
    backend = load_auto(load, folder, CPU)
    assert backend.dtype_choice.dtype == "float32"
    assert loads == ["float32", "bfloat16", "float16", "float32"]  # fastest first, each refused
    assert "not a number" in backend.dtype_choice.reason


def test_the_next_candidate_is_tried_when_the_fastest_drifts(folder, monkeypatch):
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.3, "float16": 0.5})
    load, loads = fake_loader({"bfloat16": 0.1, "float16": 0.001})
    assert load_auto(load, folder, CPU).dtype_choice.dtype == "float16"
    assert loads == ["float32", "bfloat16", "float16"]


def test_an_explicit_dtype_is_never_overridden(monkeypatch):
    """float32 (or bfloat16) asked for is what loads: no probe runs, whatever the machine would prefer."""
    from lastrank.families import load_backend

    def no_probe(*args, **kwargs):
        raise AssertionError("an explicit dtype must not be measured")

    monkeypatch.setattr(dtype_choice, "measure_speed", no_probe)
    monkeypatch.setattr(dtype_choice, "load_auto", no_probe)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        backend = load_backend("minilm", dtype=name)
        assert backend.dtype == dtype
        assert backend.dtype_choice.requested == backend.dtype_choice.dtype == name


def test_auto_on_the_real_minilm_measures_its_drift_here(tmp_path, monkeypatch):
    """The real model through load_backend: the speed is injected (bf16 twice float32's), the drift is this
    machine's own. Whatever it is, the choice follows the bound, shows in the backend and in /v1/models."""
    from lastrank.api.models import ServedModel
    from lastrank.families import load_backend

    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path))
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.5, "float16": 1.0})
    backend = load_backend("minilm", dtype="auto")
    choice = backend.dtype_choice
    assert choice.drift is not None and choice.drift >= 0
    assert choice.dtype == ("bfloat16" if choice.drift <= BOUND else "float32")
    assert backend.dtype == getattr(torch, choice.dtype)
    entry = ServedModel(name="minilm", backend=backend, ready=True).describe()  # /v1/models
    assert entry["dtype"] == choice.dtype
    assert entry["dtype_choice"]["requested"] == "auto" and entry["dtype_choice"]["drift"] == choice.drift
    assert "dtype" not in ServedModel(name="not loaded yet").describe()


def test_the_speed_probe_measures_every_type():
    seconds = dtype_choice.measure_speed(32, 64, CPU, budget_s=0.01)
    assert set(seconds) == {"float32", *dtype_choice.CANDIDATES}
    assert all(0 < s < 5 for s in seconds.values())
    assert torch.get_num_threads() >= 1  # restored


def test_a_corrupt_cache_file_is_measured_again(folder, monkeypatch):
    dtype_choice.cache_file().parent.mkdir(parents=True)
    dtype_choice.cache_file().write_text("{not json")
    calls = fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.5, "float16": 1.0})
    load, _ = fake_loader({})
    assert load_auto(load, folder, CPU).dtype_choice.dtype == "bfloat16" and len(calls) == 1
    assert json.loads(dtype_choice.cache_file().read_text())  # rewritten whole


def test_lastrank_rerank_says_what_auto_picked(tmp_path, monkeypatch, capsys):
    from lastrank.cli import main

    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 2.0, "float16": 2.0})  # float32 fastest: no drift to measure
    docs = tmp_path / "docs.txt"
    docs.write_text("green tea is healthy\nthe stock market fell\n")
    assert main(["rerank", "--model", "minilm", "--query", "tea", "--documents", str(docs), "--json"]) == 0
    out = capsys.readouterr()
    assert "lastrank: dtype auto -> float32: no type is" in out.err
    assert len(json.loads(out.out)) == 2  # the JSON on stdout is untouched
    assert main(["rerank", "--model", "minilm", "--query", "tea", "--documents", str(docs), "--dtype", "float32"]) == 0
    assert "dtype" not in capsys.readouterr().err  # asked for: nothing to explain


def test_lastrank_serve_logs_the_dtype_each_model_runs_in(tmp_path, monkeypatch, capsys):
    from lastrank.api.models import loader
    from lastrank.model.resolve import resolve_checkpoint

    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 2.0, "float16": 2.0})
    path = resolve_checkpoint("minilm")
    for dtype, said in (("auto", "dtype auto -> float32: no type is"), ("float32", "dtype float32 (as requested)")):
        settings = SimpleNamespace(device="cpu", dtype=dtype)
        loader("minilm", path, "bi-encoder", "minilm", settings)()
        assert said in capsys.readouterr().err


def _first_tiny_presets():
    from lastrank.checkpoints import presets
    from lastrank.families import FAMILIES

    return [(spec.name, next(name for name, p in presets(spec).items() if p.tiny)) for spec in FAMILIES]


@pytest.mark.parametrize("family,preset", _first_tiny_presets())
def test_auto_runs_the_drift_check_through_every_family(tmp_path, monkeypatch, family, preset):
    """The probe request goes through each family's real backend (jina-v3 listwise, pointwise pairs, causal LMs,
    m0 with a text-only request, bi-encoders) in float32 and bfloat16; the choice follows the measured drift.
    The tiny checkpoints are saved in bfloat16, as the official jina-v3 / Qwen3 ones are: still measured."""
    from lastrank.checkpoints import preset as find_preset
    from lastrank.families import load_backend

    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.5, "float16": 1.0})
    folder = find_preset(preset)[1].write(tmp_path / "model", seed=0, dtype="bfloat16")
    backend = load_backend(str(folder), dtype="auto")
    choice = backend.dtype_choice
    assert choice.drift is not None and math.isfinite(choice.drift)
    assert choice.dtype == ("bfloat16" if choice.drift <= BOUND else "float32")
    assert backend.dtype == getattr(torch, choice.dtype)


@pytest.mark.parametrize("family_known", [False, True])
def test_a_load_takes_the_fingerprint_once_and_reads_config_json_once(tmp_path, monkeypatch, family_known):
    """load_backend with dtype auto: the machine's fingerprint once per load (it was taken up to 3 times for
    the speed probe and once per candidate), and config.json parsed once by detection and the probe together
    (it was read by each); with the family already detected (serve), only the probe reads it. The family's own
    loader reads its config separately."""
    import pathlib

    from lastrank.checkpoints import preset as find_preset
    from lastrank.families import load_backend

    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    fake_timings(monkeypatch, {"float32": 1.0, "bfloat16": 0.5, "float16": 1.0})
    folder = find_preset("bi-encoder-bert-tiny")[1].write(tmp_path / "model", seed=0)
    fingerprints = []
    real = dtype_choice.fingerprint
    monkeypatch.setattr(dtype_choice, "fingerprint", lambda device: fingerprints.append(device) or real(device))
    reads = []
    read_text = pathlib.Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "config.json":
            import inspect

            # through model/checkpoint.read_config: counted by who asked for it (detection, the probe); the
            # random-weights marker's own look at the folder is not the probe's
            reader, caller = inspect.stack()[1:3]
            if reader.function == "read_config" and caller.filename.endswith(("families/__init__.py",
                                                                             "engine/dtype_choice.py")):
                reads.append(caller.function)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", counting)
    for measured in (True, False):  # measured on the first load, from the cache on the second
        fingerprints.clear()
        reads.clear()
        backend = load_backend(str(folder), dtype="auto", family="bi-encoder" if family_known else None)
        assert backend.dtype_choice.cached is not measured
        assert len(fingerprints) == 1, fingerprints
        assert len(reads) == 1, reads
