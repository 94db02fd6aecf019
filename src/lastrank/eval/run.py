"""Rerank each query's first-stage top-k in a chosen input order, with a resumable per-query cache.

The reranker is anything with `rerank(query, documents) -> list[dict]` (best first, each with `index`
and `relevance_score`): a `lastrank.Reranker` in process or a `lastrank.client.Client` for a server.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lastrank.eval.data import Candidate, Dataset
from lastrank.eval.measures import evaluate

ORDERS = ("given", "descending", "ascending", "random")
ALL_ORDERS = ("descending", "ascending", "random")  # the paper's D / A / R rows


class RerankerLike(Protocol):
    def rerank(self, query: str, documents: list[str], **kwargs: Any) -> list[dict]: ...


def order_candidates(candidates: list[Candidate], order: str, seed: int, key: str) -> list[Candidate]:
    """The order the candidates are placed in the prompt.

    given: as the run file lists them; descending/ascending: by first-stage score (file rank breaks
    ties); random: a shuffle seeded by (seed, key) so it does not depend on which queries are run."""
    desc = sorted(candidates, key=lambda c: (-c.score, c.rank))
    if order == "given":
        return list(candidates)
    if order == "descending":
        return desc
    if order == "ascending":
        return desc[::-1]
    if order == "random":
        random.Random(f"{seed}:{key}").shuffle(desc)
        return desc
    raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")


class ResultCache:
    """Append-only JSON lines, one per reranked query, flushed and fsynced as each finishes.

    A record's key is every setting that changes its result (dataset, run file, query, order, seed,
    model, dtype, top_k, truncation); records under other keys stay in the file and are ignored. A torn
    last line from a killed run is skipped."""

    KEY_FIELDS = ("dataset", "run", "qid", "order", "seed", "model", "top_k", "params")

    def __init__(self, path: Path):
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self._records[self.key(rec)] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    @classmethod
    def key(cls, rec: dict) -> str:
        return json.dumps([rec[k] for k in cls.KEY_FIELDS], sort_keys=True)

    def get(self, key_fields: dict) -> dict | None:
        return self._records.get(self.key(key_fields))

    def put(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[self.key(rec)] = rec

    def __len__(self) -> int:
        return len(self._records)


@dataclass
class Job:
    """One rerank call: a query's candidates in the order they go into the prompt."""

    key: dict  # the cache key fields
    query: str
    candidates: list[Candidate]


def rerank_jobs(
    jobs: list[Job],
    reranker: RerankerLike,
    corpus: dict[str, str],
    cache: ResultCache,
    rerank_kwargs: dict | None = None,
    progress: bool = True,
    desc: str = "rerank",
) -> tuple[list[dict], int]:
    """Runs every job not already in the cache, caching each as it finishes.

    Returns (records in job order, number actually run now)."""
    from tqdm import tqdm

    rerank_kwargs = rerank_kwargs or {}
    done = sum(1 for j in jobs if cache.get(j.key) is not None)
    records: list[dict] = []
    ran = 0
    with tqdm(total=len(jobs), initial=done, desc=desc, unit="q", disable=not progress, dynamic_ncols=True) as bar:
        for job in jobs:
            rec = cache.get(job.key)
            if rec is None:
                docs = [corpus[c.doc_id] for c in job.candidates]
                t0 = time.perf_counter()
                results = reranker.rerank(job.query, docs, **rerank_kwargs)
                seconds = time.perf_counter() - t0
                if sorted(int(r["index"]) for r in results) != list(range(len(docs))):
                    raise RuntimeError(f"reranker returned indices that are not a permutation of 0..{len(docs) - 1}")
                rec = dict(job.key)
                rec.update(
                    input=[c.doc_id for c in job.candidates],
                    ranking=[[job.candidates[int(r["index"])].doc_id, float(r["relevance_score"])] for r in results],
                    seconds=seconds,
                    n_docs=len(docs),
                )
                cache.put(rec)
                ran += 1
                bar.update(1)
            records.append(rec)
    return records, ran


def first_stage_run(dataset: Dataset, query_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """The run file as ir_measures reads it (scores as written, all candidates)."""
    return {q: {c.doc_id: c.score for c in dataset.run[q]} for q in query_ids}


def reranked_run(dataset: Dataset, qid: str, ranking: list[list]) -> dict[str, float]:
    """Reranked top-k first, then the rest of the first-stage list in its order (so R@100 still sees
    candidates beyond top-k). Scores are rank-derived so ir_measures cannot reorder ties."""
    reranked = [doc_id for doc_id, _ in ranking]
    seen = set(reranked)
    tail = [c.doc_id for c in dataset.first_stage(qid) if c.doc_id not in seen]
    full = reranked + tail
    return {doc_id: float(len(full) - i) for i, doc_id in enumerate(full)}


@dataclass
class OrderEval:
    """Everything the order study (`--order`) measured."""

    query_ids: list[str]
    rel_min: int
    first_stage: tuple[dict, dict]  # (per query, aggregate)
    orders: dict[str, tuple[dict, dict]] = field(default_factory=dict)  # order -> (per query, aggregate)
    records: dict[str, list[dict]] = field(default_factory=dict)  # order -> cache records
    ran: int = 0  # rerank calls made in this process (the rest came from the cache)
    wall_seconds: float = 0.0


def job_key(dataset: Dataset, qid: str, order: str, seed: int | None, model: str, top_k: int | None,
            params: dict | None) -> dict:
    """What identifies one cached rerank call; the resume cache matches on exactly this."""
    return {
        "dataset": dataset.name,
        "run": dataset.run_name,
        "qid": qid,
        "order": order,
        "seed": seed,
        "model": model,
        "top_k": top_k,
        "params": params or {},
    }


def evaluate_first_stage(dataset: Dataset, query_ids: list[str], rel_min: int) -> tuple[dict, dict]:
    return evaluate(dataset.qrels, first_stage_run(dataset, query_ids), query_ids, rel_min)


def run_orders(
    dataset: Dataset,
    reranker: RerankerLike,
    model: str,
    cache: ResultCache,
    orders: Iterable[str],
    query_ids: list[str],
    top_k: int | None,
    seed: int,
    rel_min: int,
    params: dict | None = None,
    rerank_kwargs: dict | None = None,
    progress: bool = True,
) -> OrderEval:
    """Reranks `query_ids` once per order and scores first stage and every order with ir_measures."""
    t0 = time.perf_counter()
    result = OrderEval(list(query_ids), rel_min, evaluate_first_stage(dataset, query_ids, rel_min))
    for order in orders:
        jobs = []
        for qid in query_ids:
            key = job_key(dataset, qid, order, seed if order == "random" else None, model, top_k, params)
            cands = order_candidates(dataset.top_k(qid, top_k), order, seed, qid)
            jobs.append(Job(key, dataset.queries[qid], cands))
        records, ran = rerank_jobs(jobs, reranker, dataset.corpus, cache, rerank_kwargs, progress, desc=order)
        result.ran += ran
        result.records[order] = records
        run = {rec["qid"]: reranked_run(dataset, rec["qid"], rec["ranking"]) for rec in records}
        result.orders[order] = evaluate(dataset.qrels, run, query_ids, rel_min)
    result.wall_seconds = time.perf_counter() - t0
    return result


def timing_summary(records: list[dict]) -> dict:
    """Per-call latency over the cached records (each keeps the seconds it took when it ran)."""
    secs = [r["seconds"] for r in records]
    docs = sum(r["n_docs"] for r in records)
    if not secs:
        return {"queries": 0}
    total = sum(secs)
    return {
        "queries": len(secs),
        "documents": docs,
        "total_seconds": total,
        "mean_seconds": total / len(secs),
        "median_seconds": statistics.median(secs),
        "max_seconds": max(secs),
        "docs_per_second": docs / total if total > 0 else None,
    }

