"""Long-document variants of a data set, built from its own passages: where chunking can find what
truncation cuts off.

    make_long(dataset, passages_per_page=8, position="random", seed=0) -> Dataset
    load_any_dataset("trec-dl-2019-long")   # the same, by name: <data set>-long or <data set>-long-end

Construction (deterministic; nothing is downloaded and no text is edited):

* Every first-stage candidate d of every query q becomes one page: d's passage plus
  `passages_per_page - 1` unrelated passages, joined by blank lines ("\\n\\n", paragraph breaks).
* Unrelated passages are drawn from the data set's own corpus, excluding every candidate of q (the whole
  run list, not only the top-k) and every passage judged for q, so a page holds no other passage the
  first stage or the assessors tied to q. The draw is `random.Random(f"{seed}:{q}:{d}").sample` over the
  sorted pool, so a page is the same on every machine and every run with the same top-k. The corpus is
  what load_dataset kept, the passages among any query's top-k candidates, so the pool, and with it a
  page's filler, differs between `--top-k` values (top 10 and top 20 give different pages for the same
  candidate): compare truncate and chunk at one top-k.
* `position="random"` puts d at a slot drawn uniformly from 0 .. passages_per_page-1 by the same seeded
  generator (so about 1 page in passages_per_page starts with it); `position="end"` always puts it last,
  past any limit shorter than the page, so truncation never sees it.
* The page's id is "<q>/<d>" and it inherits d's first-stage score and rank and d's judgment for q (qrels
  of q are renamed the same way, unjudged ones included, so nDCG's ideal ranking is unchanged). The first
  stage of the long variant therefore scores exactly as the original's (0.5058 nDCG@10 on trec-dl-2019),
  and any change after reranking comes from reading long pages.

With TREC-DL's passages (median about 86 Qwen3 tokens, roughly 75 words) an 8-passage page is about 700
tokens: a truncating reranker with a 256- or 512-token document limit reads only its first passages.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from lastrank.eval.data import Candidate, Dataset, load_dataset

PASSAGES_PER_PAGE = 8
POSITIONS = ("random", "end")
SUFFIXES = {"-long": "random", "-long-end": "end"}  # the names load_any_dataset resolves


def long_variant(name: str) -> tuple[str, str] | None:
    """("trec-dl-2019", "end") for "trec-dl-2019-long-end"; None when the name is not a long variant."""
    for suffix, position in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], position
    return None


def load_any_dataset(path: str | Path, run: str | Path | None = None, split: str = "test",
                     top_k: int | None = None) -> Dataset:
    """data.load_dataset (a folder or a bundled data set's name), and the long-page variants: a name that is
    no folder and ends in -long or -long-end (``trec-dl-2019-long``) is that variant of the data set it
    names. What `lastrank eval --data` reads."""
    variant = long_variant(str(path)) if not Path(path).expanduser().is_dir() else None
    if variant is not None:
        return make_long(load_dataset(variant[0], run=run, split=split, top_k=top_k), position=variant[1])
    return load_dataset(path, run=run, split=split, top_k=top_k)


def make_long(dataset: Dataset, passages_per_page: int = PASSAGES_PER_PAGE, position: str = "random",
              seed: int = 0) -> Dataset:
    """The long-page variant of `dataset` (module docstring). Pages are built for the candidates whose
    passages `dataset.corpus` holds (load_dataset keeps those of each query's top-k)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if passages_per_page < 2:
        raise ValueError("a long page needs at least 2 passages")
    corpus_ids = sorted(dataset.corpus)
    corpus: dict[str, str] = {}
    run: dict[str, list[Candidate]] = {}
    for qid, candidates in dataset.run.items():
        tied = {c.doc_id for c in candidates} | set(dataset.qrels.get(qid, {}))
        pool = [d for d in corpus_ids if d not in tied]
        run[qid] = [Candidate(f"{qid}/{c.doc_id}", c.rank, c.score) for c in candidates]
        for c in candidates:
            if c.doc_id not in dataset.corpus:
                continue
            rng = random.Random(f"{seed}:{qid}:{c.doc_id}")
            others = [dataset.corpus[d] for d in rng.sample(pool, min(passages_per_page - 1, len(pool)))]
            slot = rng.randrange(len(others) + 1) if position == "random" else len(others)
            corpus[f"{qid}/{c.doc_id}"] = "\n\n".join(others[:slot] + [dataset.corpus[c.doc_id]] + others[slot:])
    qrels = {qid: {f"{qid}/{d}": rel for d, rel in judged.items()} for qid, judged in dataset.qrels.items()}
    suffix = next(s for s, p in SUFFIXES.items() if p == position)
    return replace(dataset, name=dataset.name + suffix, corpus=corpus, qrels=qrels, run=run)
