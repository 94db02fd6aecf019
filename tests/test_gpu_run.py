"""benchmarks/gpu_run.py, tried without a GPU: the plan, its refusal without CUDA, one real (tiny) step on the
CPU through to the report, and the test-device switch the parity suites run under."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.device_switch import use_test_device

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.py"


def gpu_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})), cwd=ROOT)


def test_the_dry_run_plans_every_family_parity_suite_and_bench(tmp_path):
    proc = gpu_run("--out", str(tmp_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    families = ("jina-v3", "bi-encoder", "cross-encoder", "causal-lm", "jina-m0")
    for family in families:
        parity = steps[f"parity/{family}"]
        assert parity["status"] == "planned" and "pytest" in parity["argv"]
        assert all((ROOT / f).is_file() for f in parity["argv"] if f.startswith("tests/"))
    for family in ("jina-v3", "cross-encoder", "causal-lm", "jina-m0"):
        argv = steps[f"bench/{family}"]["argv"]
        assert argv[argv.index("--device") + 1] == "cuda"
        assert (ROOT / argv[1]).is_file() or argv[1:3] == ["-m", "lastrank"]
    assert steps["bench/bi-encoder"]["status"] == "no bench script for this family"
    assert report["budget_s"] < 600  # the whole run under 10 minutes
    assert "parity/causal-lm" in (tmp_path / "report.md").read_text()


def test_cuda_asked_for_without_cuda_is_one_error_line(tmp_path):
    proc = gpu_run("--out", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "CUDA is not available here" in proc.stderr


def test_a_tiny_real_run_on_the_cpu_reports_the_suite(tmp_path):
    proc = gpu_run("--out", str(tmp_path), "--device", "cpu", "--families", "bi-encoder", "--no-bench",
                   "--pytest-args", "-k short_name_resolves_to_the_packaged_model")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    (step,) = report["steps"]
    assert step["status"] == "passed" and step["junit"]["passed"] == 1 and step["junit"]["failures"] == 0
    assert report["environment"]["torch"] == torch.__version__
    assert "| parity/bi-encoder | passed |" in (tmp_path / "report.md").read_text()


def test_the_test_device_takes_every_registry_load(tmp_path, monkeypatch):
    """What LASTRANK_TEST_DEVICE=cuda does to the parity suites: a load that asks for the CPU (or nothing)
    goes to the test device; here, without CUDA, that is the registry's CUDA error, which shows the switch
    took; with CUDA, the model is there."""
    from lastrank.errors import ModelNotAvailableError
    from lastrank.families import load_backend

    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path))
    undo = use_test_device("cuda")
    try:
        for device in ("cpu", None):
            if torch.cuda.is_available():
                assert load_backend("minilm", device=device, dtype="float32").device.type == "cuda"
            else:
                with pytest.raises(ModelNotAvailableError, match="CUDA is not available"):
                    load_backend("minilm", device=device, dtype="float32")
    finally:
        undo()
    assert load_backend("minilm", dtype="float32").device.type == "cpu"  # undone
