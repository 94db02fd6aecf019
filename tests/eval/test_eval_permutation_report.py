"""Permutation study statistics and the report files (JSON, Markdown, PNG)."""

from __future__ import annotations

import json
import zlib

import pytest

from lastrank.eval.data import load_dataset
from lastrank.eval.permutation import run_permutations
from lastrank.eval.report import build_report, render_markdown, write_report
from lastrank.eval.run import ResultCache, run_orders


@pytest.fixture(scope="module")
def novel(data_root):
    return load_dataset(data_root / "noveleval-2306")


def _perm(ds, reranker, tmp_path, n=6, top_k=10, qid="2"):
    return run_permutations(ds, reranker, "fake", ResultCache(tmp_path / "p.jsonl"), qid, n, top_k, 0, 1, progress=False)


def test_content_based_reranker_is_perfectly_stable(novel, fakes, tmp_path):
    fake = fakes.Recording(score=lambda q, d: zlib.crc32(d.encode()))  # depends on the text only
    study = _perm(novel, fake, tmp_path)
    assert len(fake.calls) == 6
    inputs = [docs for _, docs in fake.calls]
    assert all(sorted(x) == sorted(inputs[0]) for x in inputs) and len(inputs[0]) == 10
    assert len({tuple(x) for x in inputs}) == 6  # six different permutations really were fed
    assert all(r["modal_fraction"] == 1.0 and r["distinct_docs"] == 1 for r in study.ranks)
    assert all(d["rank_std"] == 0.0 for d in study.docs)
    assert study.ndcg10["std"] == 0.0


def test_position_biased_reranker_is_unstable(novel, fakes, tmp_path):
    study = _perm(novel, fakes.Position(), tmp_path, n=8)
    assert max(r["modal_fraction"] for r in study.ranks) < 1.0
    assert sum(d["rank_std"] for d in study.docs) > 0
    # its output is its input, so every recorded final rank is the position the document was fed at
    assert all([doc for doc, _ in rec["ranking"]] == rec["input"] for rec in study.records)


def test_report_files_are_written_and_well_formed(novel, fakes, tmp_path):
    qids = novel.query_ids()[:4]
    orders = run_orders(novel, fakes.Recording(), "fake", ResultCache(tmp_path / "c.jsonl"), ["descending", "random"],
                        qids, 5, 0, 1, progress=False)
    perm = _perm(novel, fakes.Position(), tmp_path, n=3, top_k=5)
    config = {"dataset": novel.name, "data": str(novel.path), "layout": novel.layout, "run": novel.run_name,
              "text_convention": "x", "model": "fake", "server": None, "device": "cpu", "dtype": "float32",
              "top_k": 5, "orders": ["descending", "random"], "seed": 0}
    report = build_report(config, {"model_id": "fake"}, orders, perm)
    paths = write_report(report, tmp_path / "out")

    data = json.loads(paths["json"].read_text())
    assert list(data["aggregate"]) == ["first stage", "reranked (descending)", "reranked (random)"]
    assert set(data["per_query"]) == set(qids)
    for system, agg in data["aggregate"].items():
        for metric in ("nDCG@10", "RR@10", "R@100"):
            mean = sum(data["per_query"][q][system][metric] for q in qids) / len(qids)
            assert agg[metric] == pytest.approx(mean)
    assert data["timings"]["per_order"]["descending"]["queries"] == 4
    assert data["permutations"]["n_permutations"] == 3 and len(data["permutations"]["ranks"]) == 5

    md = paths["markdown"].read_text()
    assert md == render_markdown(report)
    fs = data["aggregate"]["first stage"]
    assert f"| first stage | {fs['nDCG@10']:.4f} | {fs['RR@10']:.4f} | {fs['R@100']:.4f} |" in md
    assert "| reranked (random) |" in md and "## Permutation stability: query 2" in md

    import matplotlib.image

    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(paths["plot"])
    assert img.shape[0] > 100 and img.shape[1] > 400


@pytest.mark.parametrize("random_weights", [True, False])
def test_random_weights_are_flagged_in_every_report_file(novel, fakes, tmp_path, monkeypatch, random_weights):
    import matplotlib.figure

    titles = []
    real_savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        titles.append(fig.get_suptitle())
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    qids = novel.query_ids()[:2]
    orders = run_orders(novel, fakes.Recording(), "fake", ResultCache(tmp_path / "c.jsonl"), ["descending"],
                        qids, 5, 0, 1, progress=False)
    config = {"dataset": novel.name, "data": str(novel.path), "layout": novel.layout, "run": novel.run_name,
              "text_convention": "x", "model": "fake", "server": None, "device": "cpu", "dtype": "float32",
              "top_k": 5, "orders": ["descending"], "seed": 0}
    report = build_report(config, {"model_id": "fake", "random_weights": random_weights}, orders, None)
    paths = write_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    md = paths["markdown"].read_text()
    assert data["model"]["random_weights"] is random_weights
    assert ("RANDOM WEIGHTS" in data.get("warning", "")) is random_weights
    assert ("RANDOM WEIGHTS" in md) is random_weights
    assert ("RANDOM WEIGHTS" in titles[0]) is random_weights
