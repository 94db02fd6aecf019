"""The long-page variants of the bundled data sets (eval/long.py) and `lastrank eval --chunking chunk`."""

from __future__ import annotations

import json

import pytest

from lastrank.cli import main
from lastrank.engine.chunking import ChunkingBackend
from lastrank.eval.data import load_dataset
from lastrank.eval.long import load_any_dataset, long_variant, make_long
from lastrank.eval.run import ResultCache, evaluate_first_stage, run_orders
from lastrank.types import RerankOptions, RerankRequest

from support.keyword_backend import KeywordBackend


@pytest.fixture(scope="module")
def base():
    return load_dataset("trec-dl-2019", top_k=20)


def test_variant_names():
    assert long_variant("trec-dl-2019-long") == ("trec-dl-2019", "random")
    assert long_variant("trec-dl-2019-long-end") == ("trec-dl-2019", "end")
    assert long_variant("trec-dl-2019") is None and long_variant("-long") is None


def test_pages_hold_their_passage_among_unrelated_ones_deterministically(base):
    long = load_any_dataset("trec-dl-2019-long", top_k=20)
    assert long.name == "trec-dl-2019-long" and long.query_ids() == base.query_ids()
    assert long.corpus == make_long(base).corpus  # the same pages every time
    end = make_long(base, position="end")
    first_slots = 0
    for qid in base.query_ids()[:5]:
        tied = {c.doc_id for c in base.run[qid]} | set(base.qrels[qid])
        tied_texts = {base.corpus[d] for d in tied if d in base.corpus}
        for c in base.top_k(qid, 20):
            page_id = f"{qid}/{c.doc_id}"
            parts = long.corpus[page_id].split("\n\n")
            assert len(parts) == 8 and parts.count(base.corpus[c.doc_id]) >= 1
            # the other seven are none of this query's candidates or judged passages
            assert sum(p in tied_texts for p in parts) == sum(p == base.corpus[c.doc_id] for p in parts)
            assert end.corpus[page_id].endswith("\n\n" + base.corpus[c.doc_id])
            first_slots += parts[0] == base.corpus[c.doc_id]
            assert long.qrels[qid].get(page_id) == base.qrels[qid].get(c.doc_id)
    assert 0 < first_slots < 100  # random slots: some pages start with the passage, most do not
    # judgments and first-stage scores carry over, so the first stage scores exactly the same
    q = base.query_ids()
    assert evaluate_first_stage(long, q, 2)[1] == evaluate_first_stage(base, q, 2)[1]


class ToyReranker:
    """Reranker.rerank over the keyword toy family (tests/support/keyword_backend.py), with chunk mode."""

    def __init__(self, max_doc_length):
        self.backend = ChunkingBackend(KeywordBackend(max_doc_length=max_doc_length))

    def rerank(self, query, documents, **options):
        request = RerankRequest(query=query, documents=documents, options=RerankOptions(**options))
        return [r.as_dict() for r in self.backend.rerank(request).results]


def test_chunking_finds_what_truncation_cuts_off_on_long_end_pages(tmp_path):
    """A deterministic word-overlap scorer reading 40 words: with the candidate always last on its page,
    truncation reads only unrelated passages, chunk mode reads the candidate too."""
    data = load_any_dataset("trec-dl-2019-long-end", top_k=20)
    queries = data.query_ids()[:10]
    reranker = ToyReranker(max_doc_length=40)
    ndcg = {}
    for mode in ("truncate", "chunk"):
        res = run_orders(data, reranker, "toy", ResultCache(tmp_path / f"{mode}.jsonl"), ["given"], queries, 20, 0, 2,
                         params={"chunking": mode}, rerank_kwargs={"chunking": mode}, progress=False)
        ndcg[mode] = res.orders["given"][1]["nDCG@10"]
    first = evaluate_first_stage(data, queries, 2)[1]["nDCG@10"]
    print(f"toy word-overlap scorer, trec-dl-2019-long-end, 10 queries, top-20: first stage {first:.4f}, "
          f"truncate {ndcg['truncate']:.4f}, chunk {ndcg['chunk']:.4f}")
    assert ndcg["chunk"] > ndcg["truncate"] + 0.05


def test_cli_eval_chunk_mode_on_the_long_set(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_checkpoint), "--data", "trec-dl-2019-long", "--queries", "1",
                 "--top-k", "3", "--max-doc-length", "64", "--chunking", "chunk", "--chunk-overlap", "8",
                 "--out", str(out), "--dtype", "float32", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["dataset"] == "trec-dl-2019-long" and report["config"]["chunking"] == "chunk"
    assert "long documents: chunk, max_doc_length 64, chunk overlap 8" in (out / "report.md").read_text()
    cached = [json.loads(line) for line in (out / "cache.jsonl").read_text().splitlines()]
    assert cached[0]["params"]["chunking"] == "chunk" and cached[0]["params"]["chunk_overlap"] == 8
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_checkpoint), "--data", "trec-dl-2019-long", "--chunk-overlap", "8",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--chunk-overlap needs --chunking chunk" in capsys.readouterr().err
