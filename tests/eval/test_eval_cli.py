"""`lastrank eval` end to end with the tiny random checkpoint (numbers are meaningless; mechanics are not)."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from lastrank.cli import main
from lastrank.cli.commands.eval import choose_out_dir


def test_cli_order_all_then_rerun_resumes_from_cache(data_root, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_checkpoint), "--data", "noveleval-2306",  # a bundled set, by name
            "--queries", "2", "--top-k", "4", "--order", "all", "--out", str(out), "--dtype", "float32",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["orders"] == ["descending", "ascending", "random"]
    # the tiny checkpoint is a make-checkpoint folder: every output says its numbers mean nothing
    assert report["model"]["random_weights"] is True and "RANDOM WEIGHTS" in report["warning"]
    assert "RANDOM WEIGHTS" in printed and "RANDOM WEIGHTS" in (out / "report.md").read_text()
    assert report["timings"]["reranked_now"] == 6 and report["timings"]["from_cache"] == 0
    for system in ("first stage", "reranked (descending)", "reranked (ascending)", "reranked (random)"):
        assert f"| {system} | {report['aggregate'][system]['nDCG@10']:.4f}" in printed
    for order in ("descending", "ascending", "random"):
        for qid, r in report["rankings"][order].items():
            assert sorted(d for d, _ in r["ranking"]) == sorted(r["input"]) and len(r["input"]) == 4
    assert (out / "report.md").stat().st_size > 0 and (out / "plot.png").read_bytes()[:4] == b"\x89PNG"

    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["timings"]["reranked_now"] == 0 and again["timings"]["from_cache"] == 6
    assert again["aggregate"] == report["aggregate"]


def test_cli_permutations_prints_the_full_first_stage_baseline(data_root, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "perm"
    assert main(["eval", "--model", str(tiny_checkpoint), "--data", str(data_root / "noveleval-2306"),
                 "--permutations", "3", "--query-id", "1", "--top-k", "5", "--out", str(out),
                 "--dtype", "float32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| first stage | 0.6503 |" in printed  # all 21 queries of the first stage
    assert "permutation study: query 1, 5 candidates, 3 random input orders" in printed
    perm = json.loads((out / "report.json").read_text())["permutations"]
    assert perm["qid"] == "1" and len(perm["docs"]) == 5 and perm["timings"]["reranked_now"] == 3


def test_default_out_dir_resumes_only_an_unfinished_matching_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = Namespace(out=None, no_resume=False)
    fp = {"model": "m", "top_k": 5}
    new, resumed = choose_out_dir(args, "ds", fp)
    assert not resumed and new.parent.name == "runs" and new.name.startswith("eval-ds-")

    old = tmp_path / "runs" / "eval-ds-20260101-000000"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"fingerprint": fp}))
    assert choose_out_dir(args, "ds", fp) == (old.relative_to(tmp_path), True)
    assert choose_out_dir(args, "ds", {"model": "other", "top_k": 5})[1] is False
    assert choose_out_dir(Namespace(out=None, no_resume=True), "ds", fp)[1] is False
    (old / "report.json").write_text("{}")  # finished: a rerun measures afresh
    assert choose_out_dir(args, "ds", fp)[1] is False


def test_cli_refuses_bad_arguments(data_root, tmp_path, capsys):
    data = str(data_root / "noveleval-2306")
    assert main(["eval", "--server", "http://127.0.0.1:9", "--data", data, "--out", str(tmp_path)]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--data", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):
        main(["eval", "--data", data])  # neither --model nor --server


def test_the_fingerprint_records_the_dtype_auto_chose(data_root, tiny_checkpoint, tmp_path):
    """--dtype auto is decided at load, per machine: the fingerprint a resumed run must match (and the config)
    record the type that ran, not "auto", so a run resumed where auto picks another type starts afresh."""
    from lastrank import Reranker

    out = tmp_path / "auto"
    assert main(["eval", "--model", str(tiny_checkpoint), "--data", "noveleval-2306", "--queries", "1",
                 "--top-k", "3", "--out", str(out), "--dtype", "auto", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    chosen = Reranker(str(tiny_checkpoint), dtype="auto").backend.dtype_choice.dtype  # cached: the same choice
    assert config["fingerprint"]["dtype"] == config["dtype"] == chosen != "auto"
    assert config["args"]["dtype"] == "auto"  # what was asked stays in the record
