"""Evaluation data: queries, passages, graded qrels and a first-stage TREC run.

Two folder layouts are read:

* lastrank's own (``datasets/README.md`` next to this file): ``queries.jsonl``, ``corpus.jsonl``,
  ``qrels.tsv`` (with a header) and ``run.<name>.trec``;
* a standard BEIR folder: ``queries.jsonl``, ``corpus.jsonl`` (``title`` + ``text``), ``qrels/<split>.tsv``,
  with the run file given separately (or a ``run.*.trec`` dropped into the folder).

The three data sets shipped with lastrank (``datasets/``: trec-dl-2019, trec-dl-2020, noveleval-2306)
are found by name as well as by path: ``load_dataset("trec-dl-2019")``.

Passage text follows the MTEB convention (Jina evaluates through MTEB): ``(title + " " + text).strip()``,
which is ``text.strip()`` when the title is empty or absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lastrank.errors import InvalidRequestError

# package data (pyproject.toml [tool.setuptools.package-data]), so names resolve in an installed copy too
BUNDLED_ROOT = Path(__file__).resolve().parent / "datasets"


@dataclass(frozen=True)
class Candidate:
    doc_id: str
    rank: int  # as written in the run file (1 = best)
    score: float


@dataclass
class Dataset:
    name: str
    path: Path
    layout: str  # "lastrank" or "beir"
    run_path: Path
    queries: dict[str, str]  # query id -> text, in queries.jsonl order
    corpus: dict[str, str]  # doc id -> passage text (only the documents some candidate list needs)
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> graded relevance
    run: dict[str, list[Candidate]]  # query id -> candidates in file order

    @property
    def run_name(self) -> str:
        return self.run_path.name

    def query_ids(self) -> list[str]:
        """Queries to rerank: judged, with candidates, in queries.jsonl order."""
        return [q for q in self.queries if q in self.run and q in self.qrels]

    def first_stage(self, qid: str) -> list[Candidate]:
        """The run's ranking as trec_eval/ir_measures read it: by score, descending; file rank breaks ties."""
        return sorted(self.run[qid], key=lambda c: (-c.score, c.rank))

    def top_k(self, qid: str, k: int | None) -> list[Candidate]:
        """The candidate set to rerank: the first stage's top k, in file order."""
        keep = {c.doc_id for c in self.first_stage(qid)[:k]}
        return [c for c in self.run[qid] if c.doc_id in keep]


def passage_text(record: dict) -> str:
    # MTEB's retrieval/reranking: (title + " " + text).strip() if the record has a title, else text.strip()
    title = record.get("title") or ""
    text = record.get("text") or ""
    return f"{title} {text}".strip()


def find_run_file(folder: Path) -> Path:
    runs = sorted(folder.glob("run.*.trec")) + sorted(folder.glob("*.trec"))
    runs = list(dict.fromkeys(runs))
    if not runs:
        raise InvalidRequestError(f"no run file (run.*.trec) in {folder}; pass --run FILE")
    if len(runs) > 1:
        names = ", ".join(p.name for p in runs)
        raise InvalidRequestError(f"several run files in {folder} ({names}); pick one with --run")
    return runs[0]


def read_run(path: Path) -> dict[str, list[Candidate]]:
    """TREC run `qid Q0 docid rank score tag`, candidates in file order; a repeated doc id keeps its first line."""
    run: dict[str, dict[str, Candidate]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 6:
                raise InvalidRequestError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}")
            qid, _, doc_id, rank, score = parts[:5]
            run.setdefault(qid, {}).setdefault(doc_id, Candidate(doc_id, int(rank), float(score)))
    return {qid: list(docs.values()) for qid, docs in run.items()}


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR-style TSV `query-id corpus-id score`; a header line is skipped, TREC 4-column qrels also work."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if n == 1 and not _is_int(parts[-1]):
                continue  # header
            if len(parts) == 4:  # TREC: qid iter docid rel
                qid, _, doc_id, rel = parts
            elif len(parts) == 3:
                qid, doc_id, rel = parts
            else:
                raise InvalidRequestError(f"{path}:{n}: expected 'query-id corpus-id score', got {line.strip()!r}")
            qrels.setdefault(qid, {})[doc_id] = int(rel)
    return qrels


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _read_jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def bundled_datasets() -> list[str]:
    """Names of the data sets shipped inside the package, sorted."""
    if not BUNDLED_ROOT.is_dir():
        return []
    return sorted(d.name for d in BUNDLED_ROOT.iterdir() if (d / "queries.jsonl").is_file())


def resolve_data(name_or_path: str | Path) -> Path:
    """A data folder: an existing folder as given, else a bundled data set by name (``trec-dl-2019``).

    A folder of the same name in the working directory wins over the bundled one, as a path should."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return folder
    names = bundled_datasets()
    if str(name_or_path) in names:
        return BUNDLED_ROOT / str(name_or_path)
    raise InvalidRequestError(
        f"data folder not found: {name_or_path}; pass a folder or the name of a bundled data set "
        f"({', '.join(names) or 'none installed'}; add -long or -long-end for its long-page variant)"
    )


def load_dataset(path: str | Path, run: str | Path | None = None, split: str = "test", top_k: int | None = None) -> Dataset:
    """Reads either layout, from a folder or a bundled data set's name (`resolve_data`). The whole run is
    kept (first-stage metrics need it), but only passages among some query's top_k candidates are kept in
    memory, so a full BEIR corpus streams through once. Long-page variants by name (``trec-dl-2019-long``):
    eval/long.py's load_any_dataset, which builds them on this."""
    folder = resolve_data(path)
    if (folder / "qrels.tsv").exists():
        layout, qrels_path = "lastrank", folder / "qrels.tsv"
    elif (folder / "qrels" / f"{split}.tsv").exists():
        layout, qrels_path = "beir", folder / "qrels" / f"{split}.tsv"
    else:
        raise InvalidRequestError(f"{folder}: neither qrels.tsv nor qrels/{split}.tsv found")
    for name in ("queries.jsonl", "corpus.jsonl"):
        if not (folder / name).exists():
            raise InvalidRequestError(f"{folder}: {name} not found")

    run_path = Path(run) if run is not None else find_run_file(folder)
    if not run_path.exists():
        raise InvalidRequestError(f"run file not found: {run_path}")
    candidates = read_run(run_path)
    qrels = read_qrels(qrels_path)
    queries = {str(r["_id"]): r.get("text", "") for r in _read_jsonl(folder / "queries.jsonl")}

    needed = {
        c.doc_id
        for qid, cands in candidates.items()
        if qid in queries
        for c in sorted(cands, key=lambda c: (-c.score, c.rank))[:top_k]
    }
    corpus: dict[str, str] = {}
    for r in _read_jsonl(folder / "corpus.jsonl"):
        doc_id = str(r["_id"])
        if doc_id in needed:
            corpus[doc_id] = passage_text(r)
    missing = sorted(needed - corpus.keys())
    if missing:
        raise InvalidRequestError(
            f"{len(missing)} candidate passages of {run_path.name} are not in {folder / 'corpus.jsonl'} "
            f"(first: {missing[:3]}); is the run file for this corpus?"
        )
    return Dataset(
        name=folder.resolve().name,
        path=folder,
        layout=layout,
        run_path=run_path,
        queries=queries,
        corpus=corpus,
        qrels=qrels,
        run=candidates,
    )
