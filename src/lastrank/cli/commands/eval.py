"""`lastrank eval` (parser: cli/eval.py): the first stage, the reranked runs (resumable, cached per query in
the output folder) and the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import httpx

from lastrank.cli.argtypes import rerank_options
from lastrank.client import Client
from lastrank.errors import InvalidRequestError
from lastrank.eval.long import load_any_dataset
from lastrank.eval.measures import METRICS, default_rel_min
from lastrank.eval.permutation import run_permutations
from lastrank.eval.report import (RANDOM_WEIGHTS_WARNING, aggregate_table, build_report, model_description,
                                  permutation_summary, write_report)
from lastrank.eval.run import ALL_ORDERS, OrderEval, ResultCache, evaluate_first_stage, run_orders
from lastrank.model.checkpoint import is_random_checkpoint
from lastrank.model.resolve import resolve_checkpoint
from lastrank.reranker import Reranker
from lastrank.types import RerankOptions

TEXT_CONVENTION = 'MTEB: (title + " " + text).strip(); text.strip() without a title'


def _fingerprint(args: argparse.Namespace, dataset, rel_min: int, dtype: str | None) -> dict:
    """The settings that decide the results; an unfinished out folder with the same ones is resumed. `dtype`:
    the type the model runs in (what "auto" chose on this machine), None for a server."""
    options = rerank_options(args)
    limits = {name: options.pop(name) for name in ("max_doc_length", "max_query_length")}
    return {
        "data": str(dataset.path.resolve()),
        "run": str(dataset.run_path.resolve()),
        "split": args.split if dataset.layout == "beir" else None,
        "model": _model_label(args),
        "dtype": dtype,
        "top_k": args.top_k,
        "order": args.order,
        "seed": args.seed,
        "queries": args.queries,
        "permutations": args.permutations,
        "query_id": args.query_id,
        "rel_min": rel_min,
        **limits,
        # only when not the defaults, so runs made before these existed still resume
        **({"dataset": dataset.name} if dataset.name != dataset.path.resolve().name else {}),
        **(options if options["chunking"] != "truncate" else {}),  # chunk mode and its settings
    }


def _model_label(args: argparse.Namespace) -> str:
    if args.server:
        return f"server:{args.server.rstrip('/')}" + (f"#{args.served_model}" if args.served_model else "")
    path = Path(args.model)
    return str(path.resolve()) if path.exists() else args.model


def choose_out_dir(args: argparse.Namespace, dataset_name: str, fingerprint: dict) -> tuple[Path, bool]:
    """(folder, resumed). --out is used as given; otherwise the newest unfinished ./runs/eval-<dataset>-*
    with the same fingerprint is continued, else a new timestamped folder is made."""
    if args.out:
        out = Path(args.out)
        return out, (out / "cache.jsonl").exists()
    root = Path("runs")
    if not args.no_resume and root.is_dir():
        for d in sorted(root.glob(f"eval-{dataset_name}-*"), reverse=True):
            cfg = d / "config.json"
            if (d / "report.json").exists() or not cfg.exists():
                continue
            try:
                if json.loads(cfg.read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
                    return d, True
            except json.JSONDecodeError:
                continue
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"eval-{dataset_name}-{stamp}", False


def _make_reranker(args: argparse.Namespace):
    """(reranker, model info for the report). Heavy imports happen here only."""
    if args.server:
        return Client(args.server, args.api_key), {"server": args.server,
                                                   **_server_model_info(args.server, args.api_key, args.served_model)}
    reranker = Reranker(args.model, device=args.device, dtype=args.dtype)
    choice = getattr(reranker.backend, "dtype_choice", None)
    info = {"model_id": reranker.model_id, "path": str(reranker.path), "device": str(reranker.device),
            "dtype": str(reranker.dtype).removeprefix("torch."), "random_weights": is_random_checkpoint(reranker.path),
            **({"dtype_warning": choice.warning} if choice is not None and choice.warning else {}),
            **_family_info(reranker.capabilities.as_dict())}
    cfg = Path(reranker.path) / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text(encoding="utf-8"))
        info["config"] = {k: c.get(k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")}
    return reranker, info


# what the report says about the model's family and score rule (engine/backend.py's Capabilities fields)
FAMILY_FIELDS = ("family", "architecture", "score", "raw_score")


def _family_info(capabilities: dict) -> dict:
    return {k: capabilities[k] for k in FAMILY_FIELDS if capabilities.get(k) is not None}


def _server_model_info(server: str, api_key: str | None, served_model: str | None = None) -> dict:
    """What the server's /v1/models says about the model eval's requests reach (`served_model`, else the only
    one, the one a request without `model` gets): `random_weights` (None when it does not say or cannot be
    asked; with no model named, whether any served model has them) and that model's family and score rule."""
    try:
        resp = httpx.get(f"{server.rstrip('/')}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        entries = resp.json().get("data", []) if resp.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return {"random_weights": None}
    entries = [e for e in entries if isinstance(e, dict)]
    if served_model is not None:
        entries = [e for e in entries if e.get("id") == served_model]
    flags = [e.get("random_weights") for e in entries if "random_weights" in e]
    info = {"random_weights": any(flags) if flags else None}
    if len(entries) == 1:
        info.update(served_model=entries[0].get("id"), **_family_info(entries[0]))
    return info


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.model:  # a missing folder or an offline hub id fails here, before torch is imported
        resolve_checkpoint(args.model)
    started = time.time()
    dataset, query_ids, rel_min, perm_qid = _select_queries(args)
    # The model before the out folder: the fingerprint a resumed run must match records the dtype the model
    # runs in, which "auto" decides at load (a run resumed on a machine where auto picks another type starts
    # afresh rather than mixing scores of two types).
    reranker, model_info = _make_reranker(args)
    try:
        dtype = None if args.server else model_info["dtype"]
        fingerprint = _fingerprint(args, dataset, rel_min, dtype)
        out_dir, resumed = choose_out_dir(args, dataset.name, fingerprint)
        out_dir.mkdir(parents=True, exist_ok=True)
        cache = ResultCache(out_dir / "cache.jsonl")
        print(f"{dataset.name}: {len(query_ids)} judged queries, run {dataset.run_name}, top-k {args.top_k}; "
              f"output {out_dir}" + (f" (resuming, {len(cache)} cached)" if resumed else ""), file=sys.stderr)

        first = evaluate_first_stage(dataset, query_ids, rel_min)
        print("first stage: " + "  ".join(f"{m} {first[1][m]:.4f}" for m in METRICS if m in first[1]), flush=True)
        config = _run_config(args, dataset, query_ids, rel_min, perm_qid, started, fingerprint, dtype)
        (out_dir / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")

        if model_info.get("random_weights"):
            print(f"lastrank: warning: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
        if model_info.get("dtype_warning"):
            print(f"lastrank: warning: {model_info['dtype_warning']}", file=sys.stderr)
        if described := model_description(model_info):
            print(f"model: {described}", file=sys.stderr)
        orders_result, perm_result = _rerank(args, dataset, reranker, config, cache, query_ids, rel_min, perm_qid)
    finally:
        if hasattr(reranker, "close"):  # the HTTP client's connection pool
            reranker.close()
    if orders_result is None:  # the permutation study still reports the first stage for context
        orders_result = OrderEval(query_ids, rel_min, first)
    config["finished"] = datetime.now(timezone.utc).isoformat()
    report = build_report(config, model_info, orders_result, perm_result)
    _print_report(report, write_report(report, out_dir))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Combinations argparse cannot refuse (InvalidRequestError: exit status 2 with the message)."""
    if args.server and not args.api_key:
        raise InvalidRequestError("--server needs --api-key")
    if args.served_model and not args.server:
        raise InvalidRequestError("--served-model needs --server (with --model the model is the one loaded)")
    rerank_options(args)  # chunk-mode flags without --chunking chunk are refused
    for flag, value in (("--top-k", args.top_k), ("--queries", args.queries), ("--permutations", args.permutations or 1)):
        if value is not None and value < 1:
            raise InvalidRequestError(f"{flag} must be at least 1")


def _select_queries(args: argparse.Namespace):
    """(dataset, the judged query ids evaluated, rel_min, the --permutations query or None)."""
    dataset = load_any_dataset(args.data, run=args.run, split=args.split, top_k=args.top_k)
    query_ids = dataset.query_ids()
    if not query_ids:
        raise InvalidRequestError(f"{args.data}: no query has both judgments and candidates in {dataset.run_name}")
    if args.queries is not None:
        query_ids = query_ids[: args.queries]
    rel_min = args.rel_min if args.rel_min is not None else default_rel_min(dataset.qrels)
    perm_qid = None
    if args.permutations:
        perm_qid = args.query_id or query_ids[0]
        if perm_qid not in dataset.run or perm_qid not in dataset.queries:
            raise InvalidRequestError(f"query {perm_qid!r} has no candidates in {dataset.run_name}")
    return dataset, query_ids, rel_min, perm_qid


def _run_config(args: argparse.Namespace, dataset, query_ids: list[str], rel_min: int, perm_qid: str | None,
                started: float, fingerprint: dict, dtype: str | None) -> dict:
    """What the run is (config.json, and report.json's "config")."""
    return {
        "dataset": dataset.name,
        "data": str(dataset.path),
        "layout": dataset.layout,
        "run": dataset.run_name,
        "text_convention": TEXT_CONVENTION,
        "model": _model_label(args),
        "server": args.server,
        "device": None if args.server else args.device,
        "dtype": dtype,  # what runs; args.dtype (below) what was asked
        "top_k": args.top_k,
        **rerank_options(args),
        "orders": [] if args.permutations else list(ALL_ORDERS) if args.order == "all" else [args.order],
        "seed": args.seed,
        "n_queries": len(query_ids),
        "rel_min": rel_min,
        "permutations": args.permutations,
        "query_id": perm_qid,
        "args": {k: v for k, v in vars(args).items() if k not in ("handler", "api_key")},
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "fingerprint": fingerprint,
    }


def _rerank(args: argparse.Namespace, dataset, reranker, config: dict, cache, query_ids: list[str], rel_min: int,
            perm_qid: str | None):
    """(the order study's result, None) or (None, the permutation study's result)."""
    options = rerank_options(args)
    # a cached result's key: the options not at their default (so older caches stay valid), and the dtype
    defaults = {f.name: f.default for f in fields(RerankOptions)}
    params = {k: v for k, v in options.items() if v != defaults[k]}
    if config["dtype"] is not None:
        params["dtype"] = config["dtype"]
    # every option always said, None meaning the family's own default: left out, the HTTP client's defaults
    # (2048 / 512 tokens, jina-v3's) would replace a served family's (jina-m0: 9728 / 512), and the server's
    # --chunking default would replace truncate
    rerank_kwargs = {**options, **({"model": args.served_model} if args.served_model else {})}
    progress = not args.no_progress
    if args.permutations:
        return None, run_permutations(dataset, reranker, config["model"], cache, perm_qid, args.permutations,
                                      args.top_k, args.seed, rel_min, params, rerank_kwargs, progress)
    return run_orders(dataset, reranker, config["model"], cache, config["orders"], query_ids,
                      args.top_k, args.seed, rel_min, params, rerank_kwargs, progress), None


def _print_report(report: dict, paths: dict) -> None:
    print()
    if report.get("warning"):
        print(f"{report['warning']}.")
    print(aggregate_table(report))
    if "permutations" in report:
        print()
        print(permutation_summary(report))
    print(f"\nreport: {paths['json']}\ntable:  {paths['markdown']}\nplot:   {paths['plot']}", file=sys.stderr)
