"""The catalogue: GET /models (static/models.html) and GET /v1/benchmarks.

/models is a page beside /playground listing every served model with what /v1/models says about it (family,
parameters, context length, languages, license, score rule, price, providers and their health) and a
benchmark table across models: the nDCG@10 of each `lastrank eval` report and the tokens/s of each
`lastrank bench --json` file the operator registered with `serve --reports FILE_OR_FOLDER`, with a compare
view of the models picked. Nothing on the page is made up: a fact a model's folder or the reports do not give
is left out.

Reports are read once at start (a file named on the command line that is not a report is a start-up error;
in a folder, JSON files that are not reports are skipped) and matched to served models by the model the
report names: the --model value, a served name or alias, the same folder (resolved path), or the served name
after `#` in an eval run against a server (`server:URL#NAME`). A report for a model this server does not
serve is a row of its own, marked "not served", so the table compares peers like a router's catalogue.

The page, like the playground, holds no data: it calls /v1/models and /v1/benchmarks with the key typed into
it, and is served with a Content-Security-Policy allowing only its own inline blocks and this server.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from lastrank.api.models import ModelTable, default_served_name
from lastrank.api.playground import content_security_policy
from lastrank.errors import LastrankError
from lastrank.model.checkpoint import is_random_checkpoint

log = logging.getLogger("lastrank.api")

PAGE = "models.html"
EVAL_SYSTEM = "reranked (given)"  # the eval order a catalogue compares: the run's order, as a router would send it

router = APIRouter()


# --- what a model's folder says about it (read once, when the model is loaded) ---

def model_card(folder: Path | str | None) -> dict:
    """{"parameters", "languages", "license"} as far as the folder says: the parameter count from the
    safetensors headers (shapes only, no weights read), languages and license from the README's model-card
    front matter (Hugging Face's `language:` / `license:`). A fact the folder does not give is absent."""
    if folder is None:
        return {}
    folder = Path(folder)
    card: dict = {}
    try:
        parameters = _safetensors_parameters(folder)
    except Exception:  # an unreadable header: the model loaded anyway, so this is only a missing fact
        log.warning("could not count the parameters of %s", folder, exc_info=True)
        parameters = None
    if parameters:
        card["parameters"] = parameters
    readme = folder / "README.md"
    if readme.is_file():
        try:
            from huggingface_hub import metadata_load  # the model card's YAML front matter, parsed as the hub does

            meta = metadata_load(readme) or {}
        except Exception:
            log.warning("could not read the model card front matter of %s", readme, exc_info=True)
            meta = {}
        languages = meta.get("language")
        if isinstance(languages, str):
            languages = [languages]
        if isinstance(languages, list) and all(isinstance(x, str) for x in languages) and languages:
            card["languages"] = languages
        if isinstance(meta.get("license"), str) and meta["license"]:
            card["license"] = meta["license"]
    return card


def _safetensors_parameters(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as f:  # reads the header only
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


# --- registered reports ---

@dataclass
class Report:
    """One registered report, reduced to what the table shows."""

    model: str  # the served name it matched, else a name from the report's model id
    served: bool
    file: str
    random_weights: bool | None = None
    ndcg_at_10: dict[str, float] = field(default_factory=dict)  # data set -> nDCG@10 (reranked, given order)
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # bench case label -> lastrank tokens/s
    machine: str | None = None  # where a bench ran: CPU or GPU, dtype, threads, load average


def read_reports(paths: tuple[str, ...] | list[str], table: ModelTable) -> list[Report]:
    """Every report in `paths` (files, or folders searched recursively for *.json), matched to `table`."""
    reports = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            for candidate in sorted(path.rglob("*.json")):
                try:
                    reports.append(read_report(candidate, table))
                except LastrankError as e:  # a folder may hold other JSON files (e.g. configs)
                    log.info("--reports: skipping %s: %s", candidate, e)
        elif path.is_file():
            reports.append(read_report(path, table))
        else:
            raise LastrankError(f"--reports {given}: no such file or folder")
    return reports


def read_report(path: Path, table: ModelTable) -> Report:
    """A `lastrank eval` report.json or a `lastrank bench --json` file; LastrankError for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LastrankError(f"--reports {path}: not a readable JSON file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "measures" in data:
        return _eval_report(path, data, table)
    if isinstance(data, dict) and isinstance(data.get("machine"), dict) and isinstance(data.get("cases"), dict):
        return _bench_report(path, data, table)
    raise LastrankError(f"--reports {path}: neither a `lastrank eval` report.json nor a `lastrank bench --json` file")


def _eval_report(path: Path, data: dict, table: ModelTable) -> Report:
    config = data["config"]
    aggregate = data.get("aggregate") or {}
    system = EVAL_SYSTEM if EVAL_SYSTEM in aggregate else next((s for s in aggregate if s.startswith("reranked")), None)
    value = (aggregate.get(system) or {}).get("nDCG@10") if system else None
    dataset = config.get("dataset")
    if not isinstance(value, (int, float)) or not isinstance(dataset, str):
        raise LastrankError(f"--reports {path}: this eval report has no reranked nDCG@10 (a permutation study?)")
    name, served = match_model(str(config.get("model", "")), table)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return Report(model=name, served=served, file=str(path), random_weights=model.get("random_weights"),
                  ndcg_at_10={dataset: float(value)})


def _bench_report(path: Path, data: dict, table: ModelTable) -> Report:
    machine = data["machine"]
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    model_id = str(model.get("id") or machine.get("checkpoint") or "")
    if not model_id:
        raise LastrankError(f"--reports {path}: this bench file names no model or checkpoint")
    speeds = {}
    for name, row in data["cases"].items():
        if isinstance(row, dict) and isinstance(row.get("lastrank_tok_s"), (int, float)):
            speeds[str(row.get("label") or name)] = float(row["lastrank_tok_s"])
    if not speeds:
        raise LastrankError(f"--reports {path}: this bench file has no case with lastrank_tok_s")
    name, served = match_model(model_id, table)
    random = model.get("random_weights")
    if random is None and Path(model_id).is_dir():
        random = is_random_checkpoint(model_id)
    where = machine.get("gpu") or machine.get("cpu") or "unknown machine"
    load = machine.get("loadavg_at_start")
    described = (f"{where}, {machine.get('dtype', '?')}, {machine.get('threads', '?')} thread(s)"
                 + (f", load average {load[0]}" if isinstance(load, list) and load else ""))
    return Report(model=name, served=served, file=str(path), random_weights=random, tokens_per_s=speeds,
                  machine=described)


def match_model(model_id: str, table: ModelTable) -> tuple[str, bool]:
    """(name, served): the served model a report's model id names, else a display name from the id."""
    if model_id.startswith("server:"):
        _, sep, served_name = model_id.partition("#")
        if not sep:
            return model_id, False  # a server's default model: which one is not said
        model_id = served_name
    try:
        return table.resolve(model_id).name, True
    except LastrankError:
        pass
    candidate = Path(model_id).expanduser()
    if candidate.is_absolute() or candidate.exists():
        wanted = candidate.resolve()
        for m in table:
            if m.model_id and Path(m.model_id).expanduser().resolve() == wanted:
                return m.name, True
    return default_served_name(model_id), False


def benchmark_table(reports: list[Report], table: ModelTable) -> dict:
    """/v1/benchmarks: one row per model (served ones first, in serving order, then the others by name),
    the data sets and bench cases as columns; a cell no report fills is absent from its row."""
    rows: dict[str, dict] = {}
    for m in table:
        rows[m.name] = {"model": m.name, "served": True, "random_weights": m.random_weights,
                        "ndcg_at_10": {}, "tokens_per_s": {}, "machines": [], "reports": []}
    for r in reports:
        row = rows.setdefault(r.model, {"model": r.model, "served": r.served, "random_weights": r.random_weights,
                                         "ndcg_at_10": {}, "tokens_per_s": {}, "machines": [], "reports": []})
        if not row["served"] and r.random_weights:
            row["random_weights"] = True
        row["ndcg_at_10"].update(r.ndcg_at_10)
        row["tokens_per_s"].update(r.tokens_per_s)
        if r.machine and r.machine not in row["machines"]:
            row["machines"].append(r.machine)
        row["reports"].append(Path(r.file).name)
    served = [rows[m.name] for m in table]
    others = sorted((row for name, row in rows.items() if not row["served"]), key=lambda row: row["model"])
    datasets = sorted({d for r in reports for d in r.ndcg_at_10})
    cases = list(dict.fromkeys(c for r in reports for c in r.tokens_per_s))
    return {"object": "list", "datasets": datasets, "cases": cases, "data": served + others}


@router.get("/v1/benchmarks", tags=["info"])
async def benchmarks(request: Request) -> dict:
    """The registered eval and bench reports (serve --reports) as a table across models: nDCG@10 per data set
    and tokens/s per bench case, the served models first; what /models shows."""
    state = request.app.state.lastrank
    await run_in_threadpool(state.auth.authenticate, request.headers.get("authorization"))
    return benchmark_table(getattr(request.app.state, "reports", []), state.models)


# --- the page ---

@lru_cache(maxsize=1)
def page() -> tuple[str, str]:
    """-> (html, its Content-Security-Policy), read once from the package data."""
    html = resources.files("lastrank.api").joinpath("static", PAGE).read_text(encoding="utf-8")
    return html, content_security_policy(html)


@router.get("/models", include_in_schema=False)
async def models_page() -> HTMLResponse:
    html, csp = page()
    return HTMLResponse(html, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
                                       "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})
