"""Per-rank stability of one query under N random input permutations (Jina's blog: one query, 110
candidates, 1,000 permutations; ranks 1-10 stay put, middle ranks swap, irrelevant documents stay low).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from lastrank.eval.data import Dataset
from lastrank.eval.measures import evaluate
from lastrank.eval.run import Job, RerankerLike, ResultCache, job_key, rerank_jobs, reranked_run


@dataclass
class PermutationStudy:
    qid: str
    query: str
    n_permutations: int
    n_docs: int
    docs: list[dict]  # per document, sorted by mean final rank
    ranks: list[dict]  # per final rank 1..n: the modal document and how often it lands there
    ndcg10: dict  # nDCG@10 over the permutations (ir_measures)
    records: list[dict]
    ran: int
    wall_seconds: float


def run_permutations(
    dataset: Dataset,
    reranker: RerankerLike,
    model: str,
    cache: ResultCache,
    qid: str,
    n: int,
    top_k: int | None,
    seed: int,
    rel_min: int,
    params: dict | None = None,
    rerank_kwargs: dict | None = None,
    progress: bool = True,
) -> PermutationStudy:
    t0 = time.perf_counter()
    base = dataset.first_stage(qid)[:top_k]
    jobs = []
    for i in range(n):
        cands = list(base)
        random.Random(f"{seed}:permutation:{qid}:{i}").shuffle(cands)
        key = job_key(dataset, qid, f"permutation-{i}", seed, model, top_k, params)
        jobs.append(Job(key, dataset.queries[qid], cands))
    records, ran = rerank_jobs(jobs, reranker, dataset.corpus, cache, rerank_kwargs, progress, desc=f"permutations q={qid}")

    first_rank = {c.doc_id: i + 1 for i, c in enumerate(base)}
    grades = dataset.qrels.get(qid, {})
    positions: dict[str, list[int]] = {c.doc_id: [] for c in base}
    per_rank: list[Counter] = [Counter() for _ in base]
    for rec in records:
        for r, (doc_id, _score) in enumerate(rec["ranking"]):
            positions[doc_id].append(r + 1)
            per_rank[r][doc_id] += 1

    docs = []
    for doc_id, ps in positions.items():
        docs.append(
            {
                "doc_id": doc_id,
                "first_stage_rank": first_rank[doc_id],
                "relevance": grades.get(doc_id),  # None = unjudged
                "mean_rank": statistics.fmean(ps),
                "rank_std": statistics.pstdev(ps),
                "min_rank": min(ps),
                "max_rank": max(ps),
            }
        )
    docs.sort(key=lambda d: (d["mean_rank"], d["first_stage_rank"]))
    ranks = []
    for r, counter in enumerate(per_rank):
        doc_id, count = counter.most_common(1)[0]
        ranks.append(
            {
                "rank": r + 1,
                "modal_doc": doc_id,
                "modal_fraction": count / len(records),
                "distinct_docs": len(counter),
            }
        )

    # nDCG@10 of each permutation's output, one pseudo-query per permutation, through ir_measures
    qrels = {f"{qid}#{i}": grades for i in range(len(records))}
    run = {f"{qid}#{i}": reranked_run(dataset, qid, rec["ranking"]) for i, rec in enumerate(records)}
    per_perm, _ = evaluate(qrels, run, list(run), rel_min)
    vals = [m["nDCG@10"] for m in per_perm.values()]
    ndcg10 = (
        {
            "mean": statistics.fmean(vals),
            "std": statistics.pstdev(vals),
            "min": min(vals),
            "max": max(vals),
        }
        if vals
        else {}
    )
    return PermutationStudy(
        qid=qid,
        query=dataset.queries[qid],
        n_permutations=n,
        n_docs=len(base),
        docs=docs,
        ranks=ranks,
        ndcg10=ndcg10,
        records=records,
        ran=ran,
        wall_seconds=time.perf_counter() - t0,
    )
