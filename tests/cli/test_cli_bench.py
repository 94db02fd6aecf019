"""`lastrank bench`: block cases labelled by their real prompt size, the packing study on backends of its
own, and the reference path read from benchmarks/ (not the package), with a clear note when it cannot be.
No timing is ever checked."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from lastrank.cli.commands import bench as bench_module
from lastrank.cli import build_parser
from lastrank.cli.commands.bench import (bench, case_label, find_reference_file, load_reference_path, packing_study,
                                with_options)

CHECKOUT_REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_path.py"


def test_case_label():
    assert case_label("2k", 517) == "517-token block"
    assert case_label("8k", 8213) == "8,213-token block"
    assert case_label("trec", 9000) == "trec"


def test_quick_bench_labels_blocks_by_their_real_token_counts(monkeypatch):
    """The quick cases are ~512 and ~1K tokens: the output must say so. No timing is checked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(["bench", "--quick", "--cases", "2k,8k", "--repeat", "1", "--no-subprocess",
                                      "--no-reference"])
    out = io.StringIO()
    res = bench(args, out=out)
    text = out.getvalue()
    for name in ("2k", "8k"):
        tokens = res["cases"][name]["prompt_tokens"]
        assert tokens < 2000  # --quick: far from 2K / 8K
        label = f"{tokens:,}-token block"
        assert res["cases"][name]["label"] == label
        assert f"[{label}]" in text and f"| {label} | {tokens} |" in text
    assert not re.search(r"\[(2k|8k)\]|\| (2k|8k) \|", text)
    assert res["machine"]["reference"] == "skipped (--no-reference)"
    # what --json writes names the model measured, for `serve --reports` (api/catalogue.py): a random one here
    assert res["model"] == {"id": res["machine"]["checkpoint"], "family": "jina-v3", "random_weights": True}


def test_packing_study_leaves_the_backend_as_it_was(tiny_reranker):
    """Packed and one-by-one run on backends of their own over the same weights; the caller's is untouched."""
    backend = tiny_reranker.backend
    before = (backend.pack_blocks, backend.max_pack_tokens, backend.packed_attention, backend.reuse_prefix)
    packed = with_options(backend, pack_blocks=True)
    assert packed.model is backend.model and packed.tokenizer is backend.tokenizer  # shared, not copied
    assert packed.pack_blocks is True and packed.reuse_prefix == backend.reuse_prefix
    said = []
    result = packing_study(backend, ["green tea leaves", "a river in the city", "coffee and sleep"] * 5, 96, 1, "cpu",
                           said.append)
    assert (backend.pack_blocks, backend.max_pack_tokens, backend.packed_attention, backend.reuse_prefix) == before
    assert len(result["blocks"]) == 4 and result["packed_speedup"] > 0 and said[0].startswith("\n[pack]")
    assert all(len(v) == 1 for v in result["seconds"].values())


def test_reference_path_is_read_from_the_checkout_not_the_package():
    """Found in the checkout (loading it is tests/model/test_fast_path.py::test_bench_quick_runs's part)."""
    import lastrank

    assert find_reference_file() == CHECKOUT_REFERENCE
    assert not any(Path(lastrank.__file__).parent.rglob("reference_path.py"))  # not shipped in the package


def test_reference_path_missing_file_or_transformers_is_a_clear_note(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_module, "REFERENCE_FILE", Path("benchmarks") / "no_such_file.py")
    monkeypatch.chdir(tmp_path)
    cls, why = load_reference_path()
    assert cls is None and "benchmarks/no_such_file.py not found" in why and "--reference FILE" in why
    with pytest.raises(SystemExit, match="no such file"):
        load_reference_path(str(tmp_path / "missing.py"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails as if not installed
    cls, why = load_reference_path(str(CHECKOUT_REFERENCE))
    assert cls is None and "transformers" in why and "not installed" in why and ".[test]" in why


def test_family_cases_run_the_benchmarks_script(tmp_path, monkeypatch):
    """`lastrank bench --family cross-encoder` runs benchmarks/bench_cross_encoder.py from the checkout with the
    preset and dtype asked for (the case itself is measured by the script; here only the dispatch)."""
    import subprocess

    from lastrank.cli import build_parser
    from lastrank.cli.commands import bench

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(argv) or subprocess.CompletedProcess(argv, 0))
    args = build_parser().parse_args(["bench", "--family", "cross-encoder", "--preset", "jina-reranker-v2-tiny",
                                      "--dtype", "float32"])
    assert bench.run(args) == 0
    assert calls[0][1].endswith("benchmarks/bench_cross_encoder.py")
    assert calls[0][2:] == ["--dtype", "float32", "--preset", "jina-reranker-v2-tiny"]
    args = build_parser().parse_args(["bench", "--family", "jina-m0", "--threads", "2"])
    assert bench.run(args) == 0
    assert calls[1][1].endswith("benchmarks/bench_m0.py")
    assert calls[1][2:] == ["--dtype", "bfloat16", "--threads", "2"]
    # --device reaches the script (benchmarks/gpu_run.py runs each family's bench on the GPU this way)
    args = build_parser().parse_args(["bench", "--family", "causal-lm", "--device", "cuda"])
    assert bench.run(args) == 0
    assert calls[2][1].endswith("benchmarks/bench_causal_lm.py") and calls[2][2:] == ["--dtype", "bfloat16", "--device", "cuda"]


def test_m0_bench_runs_a_mixed_request_exactly(tmp_path):
    """benchmarks/bench_m0.py (what `lastrank bench --family jina-m0` runs) on the tiny preset in float32: a mixed
    request (image and text documents) where both paths give the same relevance scores, and the reference's
    padded token count is at least lastrank's unpadded one."""
    import json
    import subprocess

    out = tmp_path / "m0.json"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_m0.py"
    subprocess.run([sys.executable, str(script), "--preset", "jina-reranker-m0-tiny", "--dtype", "float32",
                    "--images", "3", "--sizes", "120x90,60x200", "--text-docs", "9", "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["documents"] == {"images": 3, "image_sizes": ["120x90", "60x200"], "texts": 9}
    assert result["image_tokens_each"] == [12, 14]  # 120x90 -> 112x84 pixels -> 8x6 patches -> 12 merged tokens
    assert result["max_abs_relevance_diff"] < 1e-5
    assert result["paths"]["reference"]["tokens"] > result["paths"]["lastrank"]["tokens"] > 3 * 12  # padding
