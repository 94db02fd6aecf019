"""`lastrank bench` labels: a block case is shown by its real prompt size, not its nominal "2k"/"8k"."""

from __future__ import annotations

import io
import re

from lastrank.cli import build_parser
from lastrank.cli.bench import bench, case_label


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
