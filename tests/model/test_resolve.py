"""A bad --model fails before torch is imported (model/resolve.py is torch-free).

Whether a command failed fast is checked structurally, by what it imported, not by a timing: a missing
folder or an offline hub id must be reported before `import torch` (over a second of start-up)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from lastrank.cli import main
rc = main(sys.argv[1:])
print(rc, "torch" in sys.modules, "transformers" in sys.modules)
"""


@pytest.mark.parametrize("command", [["rerank", "--query", "q", "--documents", "DOCS"], ["eval", "--data", "noveleval-2306"],
                                     ["serve", "--db", "DB", "--port", "0"]])  # never the default 8080: it may be in use
@pytest.mark.parametrize(("model", "message"), [("/nonexistent/model-folder", "does not exist"),
                                                ("jinaai/jina-reranker-v3", "HF_HUB_OFFLINE is set")])
def test_bad_model_fails_before_importing_torch(tmp_path, command, model, message):
    docs = tmp_path / "docs.txt"
    docs.write_text("a\nb\n")
    argv = [str(docs) if a == "DOCS" else str(tmp_path / "keys.db") if a == "DB" else a for a in command]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv, "--model", model], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert message in proc.stderr, proc.stderr
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr


def test_resolve_is_importable_without_torch():
    code = "import sys, lastrank.model.resolve; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
