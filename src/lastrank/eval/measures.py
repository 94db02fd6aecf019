"""Retrieval metrics through ir_measures (pytrec_eval underneath), never by hand.

nDCG@10 uses the graded gains exactly as the qrels give them; this is what reproduces the published
first-stage baselines (0.5058 / 0.4796 / 0.6503). RR@10 and R@100 are binary, so they need a relevance
threshold: on a 0-3 scale (TREC Deep Learning) grade 1 means "related" and the track counts rel >= 2 as
relevant (Anserini/trec_eval `-l 2`); on 0-1 or 0-2 scales (BEIR, NovelEval) any grade >= 1 counts.
"""

from __future__ import annotations

from collections.abc import Iterable

import ir_measures
from ir_measures import RR, R, nDCG

METRICS = ("nDCG@10", "RR@10", "R@100")


def default_rel_min(qrels: dict[str, dict[str, int]]) -> int:
    """2 on a 4-level (0-3) scale as in TREC-DL, else 1."""
    top = max((g for docs in qrels.values() for g in docs.values()), default=1)
    return 2 if top >= 3 else 1


def measures(rel_min: int) -> dict[str, object]:
    """Short name shown in tables -> ir_measures measure object."""
    return {"nDCG@10": nDCG @ 10, "RR@10": RR(rel=rel_min) @ 10, "R@100": R(rel=rel_min) @ 100}


def evaluate(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    query_ids: Iterable[str],
    rel_min: int,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(per query {qid: {metric: value}}, aggregate {metric: mean over those queries}).

    Only `query_ids` are scored; ir_measures ranks each query's documents by score (descending)."""
    qids = [q for q in query_ids if q in qrels and run.get(q)]
    ms = measures(rel_min)
    by_obj = {m: name for name, m in ms.items()}
    q_sub = {q: qrels[q] for q in qids}
    r_sub = {q: run[q] for q in qids}
    per_query: dict[str, dict[str, float]] = {q: {} for q in qids}
    for m in ir_measures.iter_calc(list(ms.values()), q_sub, r_sub):
        per_query[m.query_id][by_obj[m.measure]] = float(m.value)
    agg = ir_measures.calc_aggregate(list(ms.values()), q_sub, r_sub) if qids else {}
    aggregate = {by_obj[m]: float(v) for m, v in agg.items()}
    return per_query, aggregate


def measure_names(rel_min: int) -> dict[str, str]:
    """Short name -> ir_measures' own spelling, for the report (e.g. RR@10 -> 'RR(rel=2)@10')."""
    return {name: str(m) for name, m in measures(rel_min).items()}
