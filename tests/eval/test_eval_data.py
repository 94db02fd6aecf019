"""Readers and first-stage metrics: the published baselines must come out exactly."""

from __future__ import annotations

import json

import pytest

from lastrank.errors import InvalidRequestError
from lastrank.eval.data import load_dataset, read_qrels
from lastrank.eval.measures import default_rel_min, measure_names
from lastrank.eval.run import evaluate_first_stage


@pytest.mark.parametrize(
    ("folder", "ndcg10", "n_queries", "rel_min"),
    [("trec-dl-2019", 0.5058, 43, 2), ("trec-dl-2020", 0.4796, 54, 2), ("noveleval-2306", 0.6503, 21, 1)],
)
def test_first_stage_baselines_exact(data_root, folder, ndcg10, n_queries, rel_min):
    ds = load_dataset(data_root / folder, top_k=1)  # top_k only limits which passages are loaded
    qids = ds.query_ids()
    assert len(qids) == n_queries
    assert default_rel_min(ds.qrels) == rel_min
    per_query, agg = evaluate_first_stage(ds, qids, rel_min)
    assert round(agg["nDCG@10"], 4) == ndcg10
    assert set(per_query) == set(qids)
    # the aggregate is the plain mean of the per-query values
    assert agg["nDCG@10"] == pytest.approx(sum(m["nDCG@10"] for m in per_query.values()) / len(qids))


def test_trec_dl_binary_measures_use_rel_2(data_root):
    ds = load_dataset(data_root / "trec-dl-2019", top_k=1)
    assert measure_names(2)["RR@10"] == "RR(rel=2)@10"
    _, strict = evaluate_first_stage(ds, ds.query_ids(), 2)
    _, loose = evaluate_first_stage(ds, ds.query_ids(), 1)
    # grade 1 ("related") counted as relevant can only raise RR and recall; nDCG does not depend on it
    assert loose["RR@10"] > strict["RR@10"]
    assert loose["R@100"] != strict["R@100"]
    assert loose["nDCG@10"] == strict["nDCG@10"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def beir_folder(tmp_path):
    """A tiny BEIR folder (title + text corpus, qrels/test.tsv) with the run file outside it."""
    d = tmp_path / "scifact-mini"
    (d / "qrels").mkdir(parents=True)
    _write_jsonl(d / "corpus.jsonl", [
        {"_id": "d1", "title": "Green tea", "text": "Catechins are antioxidants.", "metadata": {}},
        {"_id": "d2", "title": "", "text": " Coffee has caffeine.\n"},
        {"_id": "d3", "title": "Water", "text": "  "},
        {"_id": "d4", "title": "Unused", "text": "Not in any run."},
    ])
    _write_jsonl(d / "queries.jsonl", [
        {"_id": "q1", "text": "tea antioxidants", "metadata": {}},
        {"_id": "q2", "text": "no judgments for this one"},
        {"_id": "q3", "text": "caffeine"},
    ])
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq3\td2\t1\nq3\td3\t0\n")
    run = tmp_path / "bm25.trec"
    # q1's lines are out of score order on purpose: file order is not the ranking
    run.write_text("q1 Q0 d2 2 1.5 bm25\nq1 Q0 d1 1 3.0 bm25\nq1 Q0 d3 3 0.2 bm25\n"
                   "q2 Q0 d1 1 1.0 bm25\nq3 Q0 d3 1 2.0 bm25\nq3 Q0 d2 2 1.0 bm25\n")
    return d, run


def test_beir_layout(beir_folder):
    folder, run = beir_folder
    ds = load_dataset(folder, run=run)
    assert ds.layout == "beir" and ds.name == "scifact-mini"
    # MTEB convention: title and text joined by one space, stripped; no title -> the stripped text
    assert ds.corpus["d1"] == "Green tea Catechins are antioxidants."
    assert ds.corpus["d2"] == "Coffee has caffeine."
    assert ds.corpus["d3"] == "Water"
    assert "d4" not in ds.corpus  # only candidates are kept in memory
    assert ds.query_ids() == ["q1", "q3"]  # q2 has no judgments
    assert [c.doc_id for c in ds.run["q1"]] == ["d2", "d1", "d3"]  # file order
    assert [c.doc_id for c in ds.first_stage("q1")] == ["d1", "d2", "d3"]  # by score
    assert [c.doc_id for c in ds.top_k("q1", 2)] == ["d2", "d1"]  # best two by score, file order kept
    _, agg = evaluate_first_stage(ds, ds.query_ids(), 1)
    assert agg["nDCG@10"] == pytest.approx((1.0 + 0.6309297535714575) / 2)  # q1 at rank 1, q3 at rank 2


def test_beir_needs_a_run_file_and_a_matching_corpus(beir_folder, tmp_path):
    folder, run = beir_folder
    with pytest.raises(InvalidRequestError, match="run file"):
        load_dataset(folder)
    bad = tmp_path / "other.trec"
    bad.write_text("q1 Q0 nope 1 1.0 x\n")
    with pytest.raises(InvalidRequestError, match="not in"):
        load_dataset(folder, run=bad)
    with pytest.raises(InvalidRequestError, match="qrels"):
        load_dataset(folder, run=run, split="dev")


def test_run_file_found_in_folder_and_ambiguity_reported(beir_folder):
    folder, run = beir_folder
    (folder / "run.bm25.trec").write_text(run.read_text())
    assert load_dataset(folder).run_path.name == "run.bm25.trec"
    (folder / "run.dense.trec").write_text(run.read_text())
    with pytest.raises(InvalidRequestError, match="several run files"):
        load_dataset(folder)


def test_qrels_header_and_trec_format(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("query-id\tcorpus-id\tscore\n1\ta\t2\n")
    assert read_qrels(p) == {"1": {"a": 2}}
    p.write_text("1 0 a 3\n1 0 b 0\n")
    assert read_qrels(p) == {"1": {"a": 3, "b": 0}}


def test_bundled_data_sets_resolve_by_name_and_ship_as_package_data(tmp_path, monkeypatch):
    from lastrank.eval.data import BUNDLED_ROOT, bundled_datasets, resolve_data

    assert bundled_datasets() == ["noveleval-2306", "trec-dl-2019", "trec-dl-2020"]
    monkeypatch.chdir(tmp_path)  # a name works from any working directory
    ds = load_dataset("noveleval-2306", top_k=1)
    assert ds.name == "noveleval-2306" and ds.path == BUNDLED_ROOT / "noveleval-2306"
    assert len(ds.query_ids()) == 21
    # a folder of the same name in the working directory is a path and wins over the bundled set
    (tmp_path / "trec-dl-2019").mkdir()
    assert resolve_data("trec-dl-2019").resolve() == tmp_path.resolve() / "trec-dl-2019"
    with pytest.raises(InvalidRequestError, match="trec-dl-2020"):  # the message lists the names
        resolve_data("trec-dl-2021")
    # every data file is matched by the package-data globs, so an installed (non-editable) copy has them
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["lastrank.eval"]
    shipped = {p for g in globs for p in BUNDLED_ROOT.parent.glob(g)}
    on_disk = {p for p in BUNDLED_ROOT.rglob("*") if p.is_file()}
    assert on_disk and on_disk <= shipped
    assert sum(p.stat().st_size for p in on_disk) < 6_000_000  # the repository stays small
