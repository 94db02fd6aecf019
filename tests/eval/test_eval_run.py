"""Order study mechanics with fake rerankers: what is fed in which order, scoring, resume."""

from __future__ import annotations

import json

import pytest

from lastrank.eval.data import load_dataset
from lastrank.eval.run import ResultCache, order_candidates, reranked_run, run_orders


@pytest.fixture(scope="module")
def novel(data_root):
    return load_dataset(data_root / "noveleval-2306")


def _run(ds, reranker, cache, orders, qids, top_k=None, seed=0, model="fake"):
    return run_orders(ds, reranker, model, cache, orders, qids, top_k, seed, rel_min=1, progress=False)


def test_each_order_feeds_the_documents_in_that_order(novel, fakes, tmp_path):
    qids = novel.query_ids()[:2]
    fed = {}
    for order in ("given", "descending", "ascending", "random"):
        fake = fakes.Recording()
        _run(novel, fake, ResultCache(tmp_path / f"{order}.jsonl"), [order], qids, top_k=8)
        assert [q for q, _ in fake.calls] == [novel.queries[q] for q in qids]
        fed[order] = [docs for _, docs in fake.calls]
    for i, qid in enumerate(qids):
        by_score = [novel.corpus[c.doc_id] for c in novel.first_stage(qid)[:8]]
        assert fed["descending"][i] == by_score
        assert fed["ascending"][i] == by_score[::-1]
        assert fed["given"][i] == by_score  # this run file is written in score order
        assert sorted(fed["random"][i]) == sorted(by_score)
        assert fed["random"][i] not in (by_score, by_score[::-1])


def test_given_differs_from_descending_when_the_file_is_not_in_score_order(tmp_path, fakes):
    d = tmp_path / "mini"
    d.mkdir()
    (d / "queries.jsonl").write_text('{"_id": "q", "text": "query"}\n')
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": x, "text": f"text {x}"}) + "\n" for x in "abc"))
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
    (d / "run.x.trec").write_text("q Q0 b 1 1.0 x\nq Q0 a 2 3.0 x\nq Q0 c 3 2.0 x\n")
    ds = load_dataset(d)
    fed = {}
    for order in ("given", "descending"):
        fake = fakes.Recording()
        _run(ds, fake, ResultCache(tmp_path / f"{order}.jsonl"), [order], ["q"])
        fed[order] = fake.calls[0][1]
    assert fed["given"] == ["text b", "text a", "text c"]
    assert fed["descending"] == ["text a", "text c", "text b"]


def test_random_order_is_seeded_per_query(novel):
    cands = novel.top_k("0", None)
    a = order_candidates(cands, "random", 7, "0")
    assert a == order_candidates(cands, "random", 7, "0")
    assert a != order_candidates(cands, "random", 8, "0")
    assert sorted(c.doc_id for c in a) == sorted(c.doc_id for c in cands)
    with pytest.raises(ValueError):
        order_candidates(cands, "sideways", 0, "0")


def test_oracle_reranker_reaches_ideal_ndcg(novel, fakes, tmp_path):
    """A fake that scores by the qrels grade must get nDCG@10 = 1 (every judged doc is a candidate)."""
    qids = novel.query_ids()
    grade = {novel.corpus[d]: g for q in qids for d, g in novel.qrels[q].items() if d in novel.corpus}
    oracle = fakes.Recording(score=lambda q, doc: grade[doc] + 1e-6 * len(doc))  # length only breaks ties
    res = _run(novel, oracle, ResultCache(tmp_path / "c.jsonl"), ["ascending"], qids)
    per_query, agg = res.orders["ascending"]
    assert agg["nDCG@10"] == pytest.approx(1.0)
    assert res.first_stage[1]["nDCG@10"] < 1.0
    assert all(m["nDCG@10"] == pytest.approx(1.0) for q, m in per_query.items() if any(novel.qrels[q].values()))


def test_small_top_k_keeps_the_tail_in_first_stage_order(novel, fakes, tmp_path):
    qid = novel.query_ids()[0]
    reverse = fakes.Position()  # keeps input order: with ascending input, the top-3 come out reversed
    res = _run(novel, reverse, ResultCache(tmp_path / "c.jsonl"), ["ascending"], [qid], top_k=3)
    fs = [c.doc_id for c in novel.first_stage(qid)]
    run = reranked_run(novel, qid, res.records["ascending"][0]["ranking"])
    assert sorted(run, key=lambda d: -run[d]) == fs[:3][::-1] + fs[3:]
    assert res.orders["ascending"][1]["R@100"] == res.first_stage[1]["R@100"]


def test_resume_after_interruption_does_only_the_rest(novel, fakes, tmp_path):
    qids = novel.query_ids()[:5]
    cache_path = tmp_path / "cache.jsonl"
    crashing = fakes.Recording(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        _run(novel, crashing, ResultCache(cache_path), ["descending", "random"], qids)
    assert len(cache_path.read_text().splitlines()) == 3
    with open(cache_path, "a") as f:
        f.write('{"dataset": "noveleval-2306", "qid": "torn')  # a write cut short by the kill

    rest = fakes.Recording()
    resumed = _run(novel, rest, ResultCache(cache_path), ["descending", "random"], qids)
    assert len(rest.calls) == 2 * len(qids) - 3
    assert [q for q, _ in rest.calls[:2]] == [novel.queries[q] for q in qids[3:]]
    assert resumed.ran == len(rest.calls)

    fresh = _run(novel, fakes.Recording(), ResultCache(tmp_path / "fresh.jsonl"), ["descending", "random"], qids)
    assert resumed.orders == fresh.orders

    # another model or top_k is another key: nothing is reused
    other = fakes.Recording()
    _run(novel, other, ResultCache(cache_path), ["descending"], qids, model="other")
    assert len(other.calls) == len(qids)
    other_k = fakes.Recording()
    _run(novel, other_k, ResultCache(cache_path), ["descending"], qids, top_k=10)
    assert len(other_k.calls) == len(qids)


def test_bad_reranker_output_is_refused(novel, fakes, tmp_path):
    class Dropping(fakes.Recording):
        def rerank(self, query, documents, **kw):
            return super().rerank(query, documents)[:-1]

    with pytest.raises(RuntimeError, match="permutation"):
        _run(novel, Dropping(), ResultCache(tmp_path / "c.jsonl"), ["given"], novel.query_ids()[:1])


def test_identity_reranker_in_descending_order_reproduces_the_first_stage(data_root, fakes, tmp_path):
    """A reranker that keeps its input order, fed the first-stage order, must score exactly the baseline."""
    ds = load_dataset(data_root / "trec-dl-2019", top_k=100)
    res = _run(ds, fakes.Position(), ResultCache(tmp_path / "c.jsonl"), ["descending"], ds.query_ids(), top_k=100)
    assert res.orders["descending"] == res.first_stage
    assert round(res.orders["descending"][1]["nDCG@10"], 4) == 0.5058
