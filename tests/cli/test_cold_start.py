"""Cold start of `lastrank rerank` on a text model: what the path to the first result imports.

A guard on the import set, not a timing test (timings flake on a shared machine; benchmarks/cold_start.py
measures the CPU seconds). Each module below once cost a visible share of MiniLM's 2 s budget on this path
(docs/benchmarks.md, "Cold start of `lastrank rerank`"): torch._dynamo (and sympy under it) came from
nn.Embedding's init on the meta device, huggingface_hub's hub API from resolving a packaged model through
the hub cache, Pillow from looking for images among text documents; the server and reference libraries
never belong on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

NEVER_ON_THE_TEXT_PATH = (
    "torch._dynamo", "torch._inductor", "sympy",  # compiler machinery: nothing here compiles
    "huggingface_hub.hf_api",  # the hub client: a packaged model has no hub cache folder
    "PIL",  # images: none in a text request
    "transformers", "sentence_transformers",  # references, test-only
    "fastapi", "starlette", "uvicorn", "lastrank.api.app",  # the server
    "matplotlib", "scipy", "pandas",
)

SCRIPT = """
import gc, json, sys
from lastrank.cli import main
argv = ["rerank", "--model", "minilm", "--query", "green tea", "--documents", sys.argv[1], "--dtype", sys.argv[2]]
code = main(argv)
frozen = gc.get_freeze_count()
again = main(argv)  # in one process (as the tests run it): nothing frozen a second time
print(json.dumps({"code": code, "again": again, "modules": sorted(sys.modules), "frozen": frozen,
                  "frozen_after_again": gc.get_freeze_count(), "gc_enabled": gc.isenabled()}))
"""


def _run_rerank(tmp_path, dtype: str) -> dict:
    docs = tmp_path / "docs.txt"
    docs.write_text("green tea is healthy\nthe stock market fell\n")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(docs), dtype], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0 and out["again"] == 0
    return out


@pytest.mark.parametrize("dtype", ["float32", "auto"])  # auto: with its speed probe and drift check (empty cache)
def test_rerank_on_minilm_imports_only_what_the_family_needs(tmp_path, monkeypatch, dtype):
    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    modules = set(_run_rerank(tmp_path, dtype)["modules"])
    assert "torch" in modules and "lastrank.model.bert" in modules  # it did load and run the model
    loaded = [m for m in NEVER_ON_THE_TEXT_PATH if m in modules]
    assert loaded == [], f"imported on the path to the first result: {loaded}"


def test_the_first_load_runs_without_the_collector_and_is_frozen(tmp_path, monkeypatch):
    """cli/commands: collector_paused. torch's and the model's objects are frozen after the first load (torch
    alone makes well over 100,000 tracked objects), the collector is on again, and a second run in the same
    process freezes nothing more (its predecessor's garbage must stay collectable)."""
    monkeypatch.setenv("LASTRANK_CACHE_DIR", str(tmp_path / "cache"))
    out = _run_rerank(tmp_path, "float32")
    assert out["frozen"] > 100_000, out["frozen"]
    assert out["frozen_after_again"] == out["frozen"]
    assert out["gc_enabled"]
