"""benchmarks/bench_peers.py refuses a peer whose library is missing in one line, before loading anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# a script, not a package: loaded from its file
_spec = importlib.util.spec_from_file_location(
    "bench_peers", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py")
bench_peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_peers)


@pytest.mark.parametrize("peer, module", [("ort-int8", "onnxruntime"), ("st-bfloat16", "sentence_transformers")])
def test_a_missing_peer_library_is_one_line(peer, module, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert bench_peers.main(["--cases", "minilm", "--peers", f"lastrank-bfloat16,{peer}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bench_peers: error: peer {peer} needs {module}")
    assert "pip install" in err[0]


def test_unknown_peer_or_case_is_a_usage_error():
    with pytest.raises(SystemExit):
        bench_peers.main(["--peers", "tei-float32"])
    with pytest.raises(SystemExit):
        bench_peers.main(["--cases", "bge-1000"])
