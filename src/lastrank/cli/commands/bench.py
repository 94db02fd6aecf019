"""`lastrank bench` (parser and what it measures: cli/bench.py): the jina-v3 cases run here; another family's
--family runs its benchmarks/ script (FamilySpec.bench_script)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lastrank.checkpoints import presets
from lastrank.cli.bench import BUILT_IN_FAMILY, DEFAULT_FULL_CHECKPOINT, family_benches
from lastrank.engine.dtype_choice import cpu_info
from lastrank.eval.data import BUNDLED_ROOT
from lastrank.families import JINA_V3
from lastrank.families.jina_v3 import JinaV3Backend
from lastrank.families.jina_v3.backend import JinaBlockOutput
from lastrank.reranker import Reranker
from lastrank.types import RerankRequest

BLOCK_CASES = ("2k", "8k")  # a single block of about this many prompt tokens (smaller with --quick)

# ---------------------------------------------------------------------------------------------- inputs


def _find_data(arg: str | None) -> Path | None:
    for cand in ([arg] if arg else [BUNDLED_ROOT / "trec-dl-2019"]):
        path = Path(cand)
        if (path / "corpus.jsonl").is_file() and (path / "run.bm25.trec").is_file():
            return path
    if arg:
        raise SystemExit(f"lastrank bench: {arg} has no corpus.jsonl / run.bm25.trec")
    return None


def _read_jsonl(path: Path) -> dict[str, str]:
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out[str(row["_id"])] = row["text"] if not row.get("title") else f"{row['title']} {row['text']}"
    return out


def trec_request(data: Path | None, n_docs: int = 100) -> tuple[str, list[str]]:
    """One query and its first n_docs BM25 candidates, in run order (real TREC-DL-2019 passages); or a
    synthetic stand-in of similar size when the data is not there."""
    if data is None:
        rng = random.Random(0)
        vocab = "tea green health study leaf water brew drink body heart sleep coffee plant market city river".split()
        return "what are the health benefits of green tea", [
            " ".join(rng.choice(vocab) for _ in range(rng.randint(40, 90))) for _ in range(n_docs)]
    queries = _read_jsonl(data / "queries.jsonl")
    corpus = _read_jsonl(data / "corpus.jsonl")
    run: dict[str, list[tuple[int, str]]] = {}
    with (data / "run.bm25.trec").open() as f:
        for line in f:
            qid, _, docid, rank, *_ = line.split()
            run.setdefault(qid, []).append((int(rank), docid))
    # the first query (in queries.jsonl order) with n_docs candidates that are all in the corpus
    for qid, text in queries.items():
        docs = [corpus[d] for _, d in sorted(run.get(qid, [])) if d in corpus]
        if len(docs) >= n_docs:
            return text, docs[:n_docs]
    raise SystemExit(f"lastrank bench: no query in {data} has {n_docs} candidates in the corpus")


def block_request(backend, query: str, pool: list[str], target_tokens: int) -> tuple[str, list[str]]:
    """Documents from `pool` (cycled) until the single block prompt reaches about target_tokens."""
    docs: list[str] = []
    i = 0
    while True:
        docs.append(pool[i % len(pool)])
        i += 1
        plan = backend.plan(RerankRequest(query=query, documents=docs))
        if plan.usage.prompt_tokens >= target_tokens or len(docs) >= 125:
            return query, docs

# ------------------------------------------------------------------------------------ reference path

REFERENCE_FILE = Path("benchmarks") / "reference_path.py"


def find_reference_file(explicit: str | None = None, name: Path | None = None) -> Path | None:
    """benchmarks/reference_path.py (or another file of benchmarks/): `explicit` (--reference FILE; an error
    when missing), else the source checkout this package is installed from (an editable install), else
    ./benchmarks/; None when none is."""
    if explicit:
        if not Path(explicit).is_file():
            raise SystemExit(f"lastrank bench: --reference {explicit}: no such file")
        return Path(explicit)
    name = name or REFERENCE_FILE  # read at call time (tests point it elsewhere)
    # src/lastrank/cli/commands/bench.py -> the checkout's root; then the working directory
    candidates = [Path(__file__).resolve().parents[4] / name, Path.cwd() / name]
    return next((c for c in candidates if c.is_file()), None)


def run_family_bench(args: argparse.Namespace) -> int:
    script = family_benches()[args.family]
    path = find_reference_file(name=Path("benchmarks") / script)
    if path is None:
        raise SystemExit(f"lastrank bench --family {args.family}: benchmarks/{script} is not "
                         "here; run it from a source checkout")
    argv = [sys.executable, str(path), "--dtype", args.dtype]
    if args.preset:
        argv += ["--preset", args.preset]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.device != "cpu":  # lastrank's path there; these scripts keep their reference path on the CPU
        argv += ["--device", args.device]
    return subprocess.run(argv).returncode


def load_reference_path(explicit: str | None = None) -> tuple[type | None, str]:
    """(the ReferencePath class of benchmarks/reference_path.py, the file it came from), or (None, why not).

    The reference path runs on transformers, which only the `test` extra declares, so it is not part of the
    installed package but read from the repository (`find_reference_file`)."""
    path = find_reference_file(explicit)
    if path is None:
        return None, (f"{REFERENCE_FILE} not found: it is in lastrank's source repository, not in the installed "
                      "package (run from a checkout, or pass --reference FILE)")
    spec = importlib.util.spec_from_file_location("lastrank_bench_reference_path", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "transformers":
            raise
        return None, f"{path} needs transformers, which is not installed (pip install -e \".[test]\" declares it)"
    return module.ReferencePath, str(path)


def reference_path(args: argparse.Namespace, checkpoint: Path, reranker, say):
    """(a loaded ReferencePath or None, what the results record about it)."""
    if args.no_reference:
        return None, "skipped (--no-reference)"
    cls, where = load_reference_path(args.reference)
    if cls is None:
        say(f"reference path skipped: {where}")
        return None, f"skipped: {where}"
    say(f"reference path: transformers' Qwen3Model from {where}")
    return cls(checkpoint, reranker.dtype, reranker.device), where


def compare_with_reference(backend, plan, ref_outputs, ours: list[dict]) -> dict:
    """The reference's block outputs through lastrank's own (parity-tested) merge, against lastrank's result:
    how far apart the two forwards are, per document."""
    outputs = []
    for q, d, s in ref_outputs:
        s32 = s.float().cpu().numpy()
        outputs.append(JinaBlockOutput(q.float().cpu().numpy(), d.float().cpu().numpy(), ((1.0 + s32) / 2.0).max()))
    ref_result = backend.finish(plan, outputs).results
    ref_scores = np.array([x.relevance_score for x in sorted(ref_result, key=lambda x: x.index)])
    our_scores = np.array([x["relevance_score"] for x in sorted(ours, key=lambda x: x["index"])])
    if ref_scores.shape != our_scores.shape:
        raise RuntimeError(f"the reference scored {ref_scores.shape} documents, lastrank {our_scores.shape}")
    return {"max_abs_score_diff_vs_reference": float(np.abs(ref_scores - our_scores).max()),
            "kendall_tau_vs_reference": kendall_tau(ref_scores, our_scores)}


# ------------------------------------------------------------------------------------------ numbers


def matmul_tflops(size: int = 4096, reps: int = 3, device="cpu") -> float:
    """The machine's bf16 matrix-product rate, best of `reps` (a square torch.matmul)."""
    a = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    b = torch.randn(size, size, dtype=torch.bfloat16, device=device)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b), device) for _ in range(reps))
    return 2 * size**3 / best / 1e12


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device="cpu") -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def forward_flops(cfg, n_tokens: int) -> float:
    """FLOPs of the official full forward of one block: linear layers (2 x weights per token) and causal
    attention (QK^T and PV over L/2 keys on average). Embedding lookup and element-wise work not counted."""
    h, inter, nh, nkv, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    linear = h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * inter
    attention = 4 * (n_tokens / 2) * nh * hd
    return cfg.num_hidden_layers * n_tokens * (2 * linear + attention)


def kendall_tau(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return 1.0
    i, j = np.triu_indices(n, 1)
    s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s.sum() / len(s))


# ----------------------------------------------------------------------------- fresh-process probes

_PROBE = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
threads = int(os.environ.get("LASTRANK_BENCH_THREADS", "0"))
import torch
if threads:
    torch.set_num_threads(threads)
from lastrank import Reranker
t1 = time.perf_counter()
spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
r = Reranker(spec["checkpoint"], device=spec["device"], dtype=spec["dtype"])
t2 = time.perf_counter()
out = r.rerank(spec["query"], spec["documents"])
t3 = time.perf_counter()
# Peak RSS of this process: VmHWM (this address space's high-water mark). getrusage's ru_maxrss is kept
# across exec on Linux, so a child spawned by a big parent (the bench holds two models) reports the
# parent's RSS; it is printed too, for reference.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024**2
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_result_s": t3 - t2, "in_process_s": t3 - t0,
                  "peak_rss_gb": hwm, "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None,
                  "n": len(out)}))
"""


def probe(checkpoint: Path, dtype: str, query: str, documents: list[str], threads: int | None,
          device: str = "cpu", compile: bool = False) -> dict:
    """A fresh Python process: import -> load -> one rerank. Wall time includes interpreter start-up."""
    env = dict(os.environ, LASTRANK_BENCH_THREADS=str(threads or 0))
    if compile:
        env["LASTRANK_COMPILE"] = "1"  # what the probe's Reranker reads when not told (weights.strict_load)
    spec = json.dumps({"checkpoint": str(checkpoint), "dtype": dtype, "query": query, "documents": documents,
                       "device": device})
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as f:
        f.write(spec)
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, f.name],
                              capture_output=True, text=True, env=env, check=False)
    finally:
        os.unlink(f.name)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"probe process failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result

# ----------------------------------------------------------------------------------------- the run

PACK_BLOCKS = {"auto": None, "on": True, "off": False}


def run(args: argparse.Namespace) -> int:
    if args.family != BUILT_IN_FAMILY:
        return run_family_bench(args)
    results = bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def bench(args: argparse.Namespace, out=None) -> dict:
    """Every case, printed as it runs (to `out`, default stdout); returns what --json writes."""
    out = out or sys.stdout

    def say(*a):
        print(*a, file=out, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:  # a fresh Inductor cache for this run, here and in the probe processes (they inherit it)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lastrank-bench-inductor-")
    checkpoint = prepare_checkpoint(args, say)
    machine = describe_machine(args, checkpoint, say)
    # The rate is measured again after every case and the best one is the roofline: on a shared machine a
    # single measurement taken under load would flatter every fraction.
    mm_size = 512 if args.quick else (8192 if "gpu" in machine else 4096)
    rates = [matmul_tflops(mm_size, device=args.device)]
    say(f"bf16 matmul rate (measured): {rates[-1]:.3f} TFLOP/s")

    reranker = Reranker(str(checkpoint), device=args.device, dtype=args.dtype, compile=args.compile or None,
                        pack_blocks=PACK_BLOCKS[args.pack_blocks], reuse_prefix=not args.no_prefix_reuse)
    if reranker.capabilities.family != BUILT_IN_FAMILY:
        raise SystemExit(f"lastrank bench measures the {BUILT_IN_FAMILY} family; {checkpoint} is {reranker.capabilities.family}")
    reference, machine["reference"] = reference_path(args, checkpoint, reranker, say)
    data = _find_data(args.data)
    say(f"data: {data or 'synthetic text (no TREC-DL folder found)'}")
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    trec_docs, cases = build_cases(reranker.backend, data, wanted, args.quick)

    t = time.perf_counter()
    reranker.rerank("warm up", ["a short passage", "another one"])  # first-call allocations (and compile), not timed
    if args.compile:
        say(f"first call with compile (fresh cache, in the bench process): {time.perf_counter() - t:.1f} s")
    # what was measured, so `serve --reports` can put these speeds beside the served model (api/catalogue.py)
    model = {"id": str(checkpoint), "family": reranker.capabilities.family,
             "random_weights": bool(reranker.backend.random_weights)}
    results = {"model": model, "machine": machine, "matmul_tflops_measured": rates, "cases": {}}
    for name, (query, docs) in cases.items():
        row = bench_case(name, query, docs, reranker, reference, args, max(rates), say)
        if not args.no_subprocess:
            p = probe(checkpoint, args.dtype, query, docs, args.threads, args.device, args.compile)
            row["peak_rss_gb"] = p["peak_rss_gb"]
            if p.get("peak_gpu_gb") is not None:
                row["peak_gpu_gb"] = p["peak_gpu_gb"]
        rates.append(matmul_tflops(mm_size, device=args.device))
        results["cases"][name] = row
        say("  " + _summary(row))
    if "pack" in wanted:
        results["packing"] = packing_study(reranker.backend, trec_docs, 128 if args.quick else 512, args.repeat,
                                           args.device, say)
    if not args.no_subprocess:
        results["cold_start"] = cold_start(checkpoint, args, say)

    # roofline fractions against the best matmul rate seen during the whole run
    best = max(rates)
    for row in results["cases"].values():
        set_roofline(row, best)
    results["matmul_tflops"] = best
    say(f"\nbf16 matmul rate: best {best:.3f} TFLOP/s of {len(rates)} measurements "
        f"({', '.join(f'{r:.3f}' for r in rates)}); roofline fractions use the best")
    load = os.getloadavg()
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in load]
    say(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    say("\n" + _table([(row["label"], row) for row in results["cases"].values()]))
    return results


def prepare_checkpoint(args: argparse.Namespace, say) -> Path:
    """--checkpoint, else a random one: tiny (--quick, a fresh folder) or full-size (made once, then reused)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.quick:  # make-checkpoint's jina-v3 presets
        return presets(JINA_V3)["jina-v3-tiny"].write(Path(tempfile.mkdtemp(prefix="lastrank-bench-tiny-")))
    if not (DEFAULT_FULL_CHECKPOINT / "model.safetensors").is_file():
        say(f"making a random full-size checkpoint in {DEFAULT_FULL_CHECKPOINT} (once; ~1.2 GB) ...")
        presets(JINA_V3)["jina-v3-full"].write(DEFAULT_FULL_CHECKPOINT)
    return DEFAULT_FULL_CHECKPOINT


def describe_machine(args: argparse.Namespace, checkpoint: Path, say) -> dict:
    load = os.getloadavg()
    machine = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "compile": bool(args.compile), "prefix_reuse": not args.no_prefix_reuse,
               "loadavg_at_start": [round(x, 2) for x in load], "dtype": args.dtype, "checkpoint": str(checkpoint),
               "device": args.device}
    if torch.device(args.device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    say(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        + (f"; GPU {machine['gpu']}" if "gpu" in machine else ""))
    return machine


def build_cases(backend, data: Path | None, wanted: list[str], quick: bool):
    """(the TREC request's documents, {case name: (query, documents)}) for the cases asked for."""
    query, trec_docs = trec_request(data, 20 if quick else 100)
    sizes = dict(zip(BLOCK_CASES, (512, 1024) if quick else (2048, 8192)))
    cases: dict[str, tuple[str, list[str]]] = {}
    for name in wanted:
        if name in sizes:
            cases[name] = block_request(backend, query, trec_docs, sizes[name])
        elif name == "trec":
            cases[name] = (query, trec_docs)
        elif name == "small":
            cases[name] = (query, trec_docs[:10])
        elif name != "pack":
            raise SystemExit(f"lastrank bench: unknown case {name!r} (2k, 8k, trec, small, pack)")
    return trec_docs, cases


def bench_case(name: str, query: str, documents: list[str], reranker, reference, args: argparse.Namespace,
               tflops: float, say) -> dict:
    """One case: the reference path and Reranker.rerank timed interleaved, `args.repeat` times each."""
    backend = reranker.backend
    request = RerankRequest(query=query, documents=documents)
    plan = backend.plan(request)
    tokens = plan.usage.prompt_tokens
    row = {"label": case_label(name, tokens), "documents": len(documents), "blocks": [b.n_tokens for b in plan.blocks],
           "prompt_tokens": tokens, "flops": sum(forward_flops(backend.model.config, b.n_tokens) for b in plan.blocks)}
    set_roofline(row, tflops)
    say(f"\n[{row['label']}] {len(documents)} documents, {len(plan.blocks)} block(s), {tokens} prompt tokens "
        f"(blocks: {row['blocks']}); bf16 roofline {row['roofline_tok_s']:.0f} tok/s")
    markers = backend.tokenizer.doc_marker_id, backend.tokenizer.query_marker_id
    wall: dict[str, list[float]] = {"reference": [], "lastrank": []}
    cpu: dict[str, list[float]] = {"reference": [], "lastrank": []}
    plan_s: list[float] = []
    for i in range(max(1, args.repeat)):
        if reference is not None:
            ref_outputs = _clocked(lambda: [reference.run_block(b.input_ids, *markers) for b in plan.blocks],
                                   args.device, wall["reference"], cpu["reference"])
            say(f"  run {i + 1}: reference {tokens / wall['reference'][-1]:8.1f} tok/s ({wall['reference'][-1]:.2f} s "
                f"wall, {cpu['reference'][-1]:.2f} s CPU)")
        ours = _clocked(lambda: reranker.rerank(query, documents), args.device, wall["lastrank"], cpu["lastrank"])
        _clocked(lambda: backend.plan(request), "cpu", plan_s, [])
        say(f"  run {i + 1}: lastrank  {tokens / wall['lastrank'][-1]:8.1f} tok/s ({wall['lastrank'][-1]:.2f} s wall, "
            f"{cpu['lastrank'][-1]:.2f} s CPU; tokenization/plan about {plan_s[-1]:.2f} s)")
    row.update({"lastrank_s": wall["lastrank"], "lastrank_cpu_s": cpu["lastrank"], "plan_s": plan_s,
                "lastrank_tok_s": tokens / min(wall["lastrank"])})
    set_roofline(row, tflops)
    if reference is not None:
        row.update({"reference_s": wall["reference"], "reference_cpu_s": cpu["reference"],
                    "reference_tok_s": tokens / min(wall["reference"]),
                    "ratio": min(wall["reference"]) / min(wall["lastrank"]),
                    # Process CPU time is less sensitive than wall time to other processes on a shared machine
                    # (with 1 thread it is close to the work done); reported next to the wall-time ratio.
                    "cpu_ratio": min(cpu["reference"]) / min(cpu["lastrank"])})
        row.update(compare_with_reference(backend, plan, ref_outputs, ours))
    return row


def _clocked(fn, device, wall: list[float], cpu: list[float]):
    """fn(), its wall and process CPU time appended to `wall` and `cpu` (the device synchronised first)."""
    t, c = time.perf_counter(), time.process_time()
    result = fn()
    _sync(device)
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    return result


def set_roofline(row: dict, tflops: float) -> None:
    """The bf16 roofline tokens/s of a case at `tflops`, and lastrank's fraction of it."""
    row["roofline_tok_s"] = row["prompt_tokens"] / (row["flops"] / (tflops * 1e12))
    if "lastrank_tok_s" in row:
        row["lastrank_roofline_fraction"] = row["lastrank_tok_s"] / row["roofline_tok_s"]


def cold_start(checkpoint: Path, args: argparse.Namespace, say) -> dict:
    # with --compile the bench process already filled the cache: this is the warm-cache start
    cold = probe(checkpoint, args.dtype, "What are the health benefits of green tea?",
                 ["Green tea is rich in antioxidants.", "Cars need fuel."], args.threads, args.device, args.compile)
    what = "compile cache warm" if args.compile else "small request"
    say(f"\ncold start (fresh process, {what}): first result after {cold['in_process_s']:.2f} s "
        f"(import {cold['import_s']:.2f} s, load {cold['load_s']:.2f} s, first result {cold['first_result_s']:.2f} s); "
        f"{cold['wall_s']:.2f} s wall for the whole process, interpreter start and exit included; "
        f"peak RSS {cold['peak_rss_gb']:.2f} GB")
    return cold


def packing_study(backend, pool: list[str], target_tokens: int, repeat: int, device, say) -> dict:
    """run_blocks on 4 blocks of ~target_tokens from 4 requests: one forward per block vs one packed forward.

    Each setting gets its own backend over the same loaded model (`with_options`: the weights are shared,
    not copied), so the backend the rest of the bench uses is never changed."""
    blocks = []
    for i in range(4):
        q, docs = block_request(backend, f"query number {i}", pool[i * 7:] + pool[:i * 7], target_tokens)
        blocks += backend.plan(RerankRequest(query=q, documents=docs, request_id=f"r{i}")).blocks
    tokens = sum(b.n_tokens for b in blocks)
    paths = {"one_by_one": with_options(backend, pack_blocks=False), "packed": with_options(backend, pack_blocks=True)}
    for path in paths.values():
        path.run_blocks(blocks[:1])  # untimed: each keeps its own system-turn prefix cache from this forward
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(max(1, repeat)):
        for name, path in paths.items():
            times[name].append(_timed(lambda: path.run_blocks(blocks), device))
    best = {k: min(v) for k, v in times.items()}
    say(f"\n[pack] 4 requests x 1 block ({[b.n_tokens for b in blocks]} tokens): one by one "
        f"{tokens / best['one_by_one']:.1f} tok/s, packed {tokens / best['packed']:.1f} tok/s "
        f"(packed/one-by-one speed {best['one_by_one'] / best['packed']:.2f}x)")
    return {"blocks": [b.n_tokens for b in blocks], "seconds": times,
            "packed_speedup": best["one_by_one"] / best["packed"]}


def with_options(backend, **options):
    """A second JinaV3Backend over `backend`'s loaded model and tokenizer with some options changed."""
    kept = {"pack_blocks": backend.pack_blocks, "max_pack_tokens": backend.max_pack_tokens,
            "packed_attention": backend.packed_attention, "reuse_prefix": backend.reuse_prefix}
    return JinaV3Backend(backend.model, backend.tokenizer, backend.device, **{**kept, **options},
                         model_id=backend.model_id, path=backend.path, random_weights=backend.random_weights)


def case_label(name: str, prompt_tokens: int) -> str:
    """How a case is shown: a block case by its real prompt size ("2k" is a 517-token block with --quick)."""
    return f"{prompt_tokens:,}-token block" if name in BLOCK_CASES else name


def _summary(row: dict) -> str:
    parts = [f"lastrank {row['lastrank_tok_s']:.1f} tok/s"]
    if "reference_tok_s" in row:
        parts.append(f"reference {row['reference_tok_s']:.1f} tok/s")
        parts.append(f"ratio {row['ratio']:.2f}x (CPU-time ratio {row['cpu_ratio']:.2f}x)")
    parts.append(f"{100 * row['lastrank_roofline_fraction']:.0f}% of roofline")
    if "kendall_tau_vs_reference" in row:
        parts.append(f"tau vs reference {row['kendall_tau_vs_reference']:.3f}")
    if "peak_rss_gb" in row:
        parts.append(f"peak RSS {row['peak_rss_gb']:.2f} GB")
    return ", ".join(parts)


def _table(rows) -> str:
    gpu = any("peak_gpu_gb" in r for _, r in rows)
    head = ("| case | tokens | reference tok/s | lastrank tok/s | ratio (wall) | ratio (CPU time) | roofline tok/s "
            "| % roofline | peak RSS GB |" + (" peak GPU memory GB |" if gpu else ""))
    lines = [head, "|" + "---|" * (10 if gpu else 9)]
    for name, r in rows:
        ref = f"{r['reference_tok_s']:.1f}" if "reference_tok_s" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        cpu_ratio = f"{r['cpu_ratio']:.2f}x" if "cpu_ratio" in r else "-"
        rss = f"{r['peak_rss_gb']:.2f}" if "peak_rss_gb" in r else "-"
        line = (f"| {name} | {r['prompt_tokens']} | {ref} | {r['lastrank_tok_s']:.1f} | {ratio} | {cpu_ratio} | "
                f"{r['roofline_tok_s']:.0f} | {100 * r['lastrank_roofline_fraction']:.0f}% | {rss} |")
        if gpu:
            line += f" {r['peak_gpu_gb']:.2f} |" if "peak_gpu_gb" in r else " - |"
        lines.append(line)
    return "\n".join(lines)


def _cpu_name() -> str:
    return cpu_info()[0]
