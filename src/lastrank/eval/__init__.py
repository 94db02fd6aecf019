"""Evaluation: nDCG@10 / RR@10 / R@100 of a reranker over a first-stage run, the input-order study
(descending / ascending / random, as in the paper's Table 3) and the per-query permutation study.

    from lastrank.eval.data import load_dataset
    from lastrank.eval.run import ResultCache, run_orders
    ds = load_dataset("trec-dl-2019", top_k=100)   # a bundled data set, or any folder
    res = run_orders(ds, reranker, "my-model", ResultCache("cache.jsonl"), ["descending"], ds.query_ids(),
                     top_k=100, seed=0, rel_min=2)
    res.first_stage[1]["nDCG@10"], res.orders["descending"][1]["nDCG@10"]

`reranker` is a `lastrank.Reranker` or `lastrank.Client` (anything with their `rerank`). The CLI is
`lastrank eval` (lastrank/cli/eval.py).
"""
