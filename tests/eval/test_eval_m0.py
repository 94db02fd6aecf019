"""`lastrank eval` with jina-reranker-m0 (the multimodal family, engine rule "sigmoid") on a text data set, in
process and against a served m0, with a tiny random float32 checkpoint. The numbers mean nothing; the wiring
is checked against what the Python API gives for the same queries and candidates, scored by ir_measures here
from files read here, so a mis-wired family (another prompt, another length limit, another model) fails."""

from __future__ import annotations

import csv
import json

import ir_measures
import pytest
from ir_measures import nDCG
from support.server_process import served_with_key

from lastrank.cli import main

QUERIES, TOP_K = 3, 10  # the first 3 judged queries of TREC-DL-2019, each BM25 top 10
COMMON = ["--data", "trec-dl-2019", "--queries", str(QUERIES), "--top-k", str(TOP_K), "--no-progress"]


@pytest.fixture(scope="module")
def m0_checkpoint(tmp_path_factory):
    from lastrank.checkpoints.m0 import make_m0_checkpoint

    return make_m0_checkpoint(tmp_path_factory.mktemp("m0") / "ckpt", "tiny", seed=11, dtype="float32")


@pytest.fixture(scope="module")
def plot_titles():
    """Every figure's suptitle, as report.plot saves it (recorded by the module's in-process run)."""
    return []


@pytest.fixture(scope="module")
def local_report(m0_checkpoint, tmp_path_factory, plot_titles):
    import matplotlib.figure

    out = tmp_path_factory.mktemp("m0-local") / "out"
    real_savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        plot_titles.append(fig.get_suptitle())
        return real_savefig(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
        assert main(["eval", "--model", str(m0_checkpoint), "--dtype", "float32", "--out", str(out), *COMMON]) == 0
    return out


@pytest.fixture(scope="module")
def served_m0(m0_checkpoint, tmp_path_factory):
    with served_with_key(m0_checkpoint, tmp_path_factory.mktemp("m0-serve")) as served:
        yield served


def _read_bundled(data_root, name: str):
    """(queries, passages, graded qrels, run rows) read straight from the shipped files, not through
    lastrank.eval.data."""
    folder = data_root / name
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open(encoding="utf-8")]
    corpus = {}
    for line in (folder / "corpus.jsonl").open(encoding="utf-8"):
        rec = json.loads(line)
        corpus[rec["_id"]] = f"{rec.get('title') or ''} {rec.get('text') or ''}".strip()
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    run: dict[str, list[tuple[str, int, float]]] = {}
    for line in next(folder.glob("run.*.trec")).open(encoding="utf-8"):
        qid, _, doc, rank, score, _ = line.split()
        run.setdefault(qid, []).append((doc, int(rank), float(score)))
    return queries, corpus, qrels, run


def _assert_names_m0(model: dict) -> None:
    assert model["family"] == "jina-m0" and model["score"] == "sigmoid"
    assert model["raw_score"].endswith("- 2.65") and model["architecture"].startswith("JinaVLForRanking")
    assert model["random_weights"] is True


def test_eval_in_process_equals_ir_measures_on_the_python_api_scores(local_report, m0_checkpoint, data_root,
                                                                     plot_titles):
    from lastrank import Reranker

    report = json.loads((local_report / "report.json").read_text())
    queries, corpus, qrels, run = _read_bundled(data_root, "trec-dl-2019")
    qids = [q["_id"] for q in queries if q["_id"] in qrels and q["_id"] in run][:QUERIES]
    assert report["queries"] == qids

    reranker = Reranker(m0_checkpoint, dtype="float32")
    assert reranker.capabilities.family == "jina-m0"
    api_run = {}
    for q in queries:
        if q["_id"] not in qids:
            continue
        top = sorted(run[q["_id"]], key=lambda r: (-r[2], r[1]))[:TOP_K]  # BM25 top 10, ties by file rank
        docs = [doc for doc, _, _ in top]
        results = reranker.rerank(q["text"], [corpus[d] for d in docs])
        api_run[q["_id"]] = {docs[r["index"]]: r["relevance_score"] for r in results}
        scores = list(api_run[q["_id"]].values())
        assert all(0.0 < s < 1.0 for s in scores)  # sigmoid scores
        assert len(set(scores)) == len(scores)  # no ties, so ir_measures' order is the scores' order
        # the run's ranking is the API's: same documents, same order, same scores
        ranking = report["rankings"]["given"][q["_id"]]["ranking"]
        assert [d for d, _ in ranking] == [docs[r["index"]] for r in results]
        assert [s for _, s in ranking] == pytest.approx([r["relevance_score"] for r in results], abs=1e-6)

    per_query = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], qrels, api_run)}
    for qid in qids:
        assert report["per_query"][qid]["reranked (given)"]["nDCG@10"] == pytest.approx(per_query[qid], abs=1e-9)
    expected = ir_measures.calc_aggregate([nDCG @ 10], {q: qrels[q] for q in qids}, api_run)[nDCG @ 10]
    assert report["aggregate"]["reranked (given)"]["nDCG@10"] == pytest.approx(expected, abs=1e-9)
    # the first stage is BM25's own order, scored the same way
    bm25 = {q: {doc: score for doc, _, score in run[q]} for q in qids}
    first = ir_measures.calc_aggregate([nDCG @ 10], {q: qrels[q] for q in qids}, bm25)[nDCG @ 10]
    assert report["aggregate"]["first stage"]["nDCG@10"] == pytest.approx(first, abs=1e-9)

    # every output names the family and its score rule and marks the weights as random
    _assert_names_m0(report["model"])
    assert "RANDOM WEIGHTS" in report["warning"]
    md = (local_report / "report.md").read_text()
    assert "RANDOM WEIGHTS" in md and "family jina-m0; relevance_score = sigmoid(raw_score) in [0, 1]" in md
    assert len(plot_titles) == 1
    assert "RANDOM WEIGHTS" in plot_titles[0] and "family jina-m0" in plot_titles[0]


def test_eval_against_a_served_m0_equals_in_process(served_m0, local_report, tmp_path):
    url, key = served_m0
    out = tmp_path / "srv"
    assert main(["eval", "--server", url, "--api-key", key, "--out", str(out), *COMMON]) == 0
    srv = json.loads((out / "report.json").read_text())
    local = json.loads((local_report / "report.json").read_text())
    _assert_names_m0(srv["model"])  # from the server's /v1/models
    assert srv["model"]["served_model"] == "jina-reranker-m0"
    assert "RANDOM WEIGHTS" in srv["warning"] and "family jina-m0" in (out / "report.md").read_text()
    assert srv["timings"]["reranked_now"] == QUERIES
    for qid, s in srv["rankings"]["given"].items():
        lo = local["rankings"]["given"][qid]
        assert s["input"] == lo["input"]
        assert [d for d, _ in s["ranking"]] == [d for d, _ in lo["ranking"]]
        assert [v for _, v in s["ranking"]] == pytest.approx([v for _, v in lo["ranking"]], abs=1e-5)
    assert srv["aggregate"] == local["aggregate"]


def test_served_m0_cuts_a_long_document_at_its_own_default_not_the_clients(served_m0, m0_checkpoint, tmp_path):
    """A passage of about 3,000 tokens: m0's default document limit is 9,728 tokens, the HTTP client's own
    default 2,048 (jina-v3's). Eval must leave the limit to the server's family, as it does in process."""
    data = tmp_path / "long-set"
    data.mkdir()
    long_text = " ".join(f"word{i} about coffee and tea" for i in range(600))
    docs = {"long": long_text, "a": "Green tea is brewed from unoxidised leaves.", "b": "Espresso is coffee."}
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "coffee or tea"}) + "\n")
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
    (data / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tlong\t1\nq1\ta\t0\n")
    (data / "run.x.trec").write_text("q1 Q0 long 1 3.0 x\nq1 Q0 a 2 2.0 x\nq1 Q0 b 3 1.0 x\n")
    url, key = served_m0
    common = ["--data", str(data), "--no-progress"]
    assert main(["eval", "--server", url, "--api-key", key, "--out", str(tmp_path / "srv"), *common]) == 0
    assert main(["eval", "--model", str(m0_checkpoint), "--dtype", "float32", "--out", str(tmp_path / "local"),
                 *common]) == 0
    srv = dict(json.loads((tmp_path / "srv" / "report.json").read_text())["rankings"]["given"]["q1"]["ranking"])
    local = dict(json.loads((tmp_path / "local" / "report.json").read_text())["rankings"]["given"]["q1"]["ranking"])
    assert srv["long"] == pytest.approx(local["long"], abs=1e-5)
    assert srv == pytest.approx(local, abs=1e-5)


def test_eval_chunk_mode_with_m0_scores_pages_as_the_python_api(m0_checkpoint, tmp_path):
    """--chunking chunk on the long-page variant (pages of about 700 tokens, 128-token windows): eval passes
    the chunk settings to m0 exactly as a Python caller would."""
    from lastrank import Reranker
    from lastrank.eval.long import load_any_dataset

    out = tmp_path / "chunk"
    assert main(["eval", "--model", str(m0_checkpoint), "--dtype", "float32", "--data", "trec-dl-2019-long",
                 "--queries", "1", "--top-k", "3", "--chunking", "chunk", "--max-doc-length", "128",
                 "--chunk-overlap", "40", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["chunking"] == "chunk" and report["model"]["family"] == "jina-m0"
    ds = load_any_dataset("trec-dl-2019-long", top_k=3)  # the pages eval built (their filler depends on top-k)
    (qid,) = report["queries"]
    pages = report["rankings"]["given"][qid]["input"]
    results = Reranker(m0_checkpoint, dtype="float32").rerank(
        ds.queries[qid], [ds.corpus[p] for p in pages], max_doc_length=128, chunking="chunk", chunk_overlap=40)
    assert max(len(ds.corpus[p]) for p in pages) > 2000  # long pages: several windows each
    expected = {pages[r["index"]]: r["relevance_score"] for r in results}
    assert dict(report["rankings"]["given"][qid]["ranking"]) == pytest.approx(expected, abs=1e-6)
    truncated = Reranker(m0_checkpoint, dtype="float32").rerank(ds.queries[qid], [ds.corpus[p] for p in pages],
                                                                 max_doc_length=128)
    assert {pages[r["index"]]: r["relevance_score"] for r in truncated} != pytest.approx(expected, abs=1e-6)
