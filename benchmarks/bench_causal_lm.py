"""Causal-LM rerankers (Qwen3-Reranker, mxbai-rerank-v2): lastrank against the official code's path.

One query of TREC-DL 2019 and its first --k BM25 passages (the bundled data), on a random-weight checkpoint
of the real shape (`make-checkpoint --preset qwen3-reranker-0.6b | mxbai-rerank-base-v2`; the speed does not
depend on the weights). Timed end to end, tokenisation included, best of --repeats after a small warm-up:

  reference   the official code on transformers (SDPA): Qwen3-Reranker: the model card's process_inputs +
              compute_logits (left-padded batches of --batch in input order; the card itself sends all pairs
              as one batch); mxbai-rerank-v2: the mxbai-rerank 0.1.6 package's rank() (its own length-bucketed
              batches of 32). The code is tests/support/reference_causal_lm.py's.
  lastrank    Reranker(folder).rerank(query, passages): the shared prefix (system turn, instruction, query)
              computed once, every pair's own tokens packed into one forward, two LM-head rows.
  no prefix   the same with reuse_prefix=False (every pair whole, still packed): the shared prefix's part.

Prints the tokens each path runs, wall and process CPU times (compare CPU on a shared machine), the speed-ups and the largest |raw score difference| against
the reference (meaningful in float32). Usage:
  python benchmarks/bench_causal_lm.py --preset qwen3-reranker-0.6b [--threads 2] [--k 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the references: tests/support
sys.path.insert(0, str(ROOT / "benchmarks"))


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process, the output). CPU time is the number to compare on
    a shared machine: other processes' load stretches wall time, not this process's CPU time."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="qwen3-reranker-0.6b",
                   choices=["qwen3-reranker-0.6b", "mxbai-rerank-base-v2", "qwen3-reranker-tiny", "mxbai-rerank-v2-tiny"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--k", type=int, default=100, help="passages of the query")
    p.add_argument("--batch", type=int, default=32, help="the Qwen3 reference's batch size")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--checkpoint", type=Path, help="an existing folder (default: a fresh random one)")
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cpu",
                   help="where lastrank's path runs (cpu, cuda[:N]); the reference path stays on the CPU")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from bench_cross_encoder import trec_query
    from support.reference_causal_lm import Qwen3RerankerCard, mxbai_package

    from lastrank import Reranker
    from lastrank.checkpoints import CAUSAL_PRESETS, preset
    from lastrank.types import RerankRequest

    kind, _ = CAUSAL_PRESETS[args.preset]
    dtype = getattr(torch, args.dtype)
    folder = args.checkpoint or preset(args.preset)[1].write(Path(tempfile.mkdtemp()) / args.preset, dtype=args.dtype)
    query, passages = trec_query(k=args.k)
    warm = (query, passages[:2])

    if kind == "mxbai-rerank-v2":
        ranker = mxbai_package(folder, 8192)
        ranker.model.to(dtype)

        def reference(q, docs) -> np.ndarray:
            results = ranker.rank(q, docs, top_k=len(docs), sort=False, return_documents=False)
            raw = np.empty(len(docs))
            raw[[r.index for r in results]] = [r.score for r in results]
            return raw

        def reference_tokens(q, docs) -> int:
            return sum(int(ranker.prepare_inputs([q], [d])["input_ids"].numel()) for d in docs)
    else:
        card = Qwen3RerankerCard(folder)
        card.model.to(dtype)

        def reference(q, docs) -> np.ndarray:
            return np.concatenate([card.raw(q, docs[i:i + args.batch])[0] for i in range(0, len(docs), args.batch)])

        def reference_tokens(q, docs) -> int:
            return sum(int(card.process_inputs([card.format_instruction(None, q, d) for d in docs[i:i + args.batch]],
                                               8192)["input_ids"].numel())  # padded batches
                       for i in range(0, len(docs), args.batch))

    ours = Reranker(str(folder), device=args.device, dtype=args.dtype)
    backend = ours.backend
    backend = getattr(backend, "inner", backend)  # a chunking wrapper, where the Reranker adds one

    def lastrank(reuse: bool):
        def run(q, docs):
            backend.reuse_prefix = reuse
            return ours.rerank(q, docs)
        return run

    plan = backend.plan(RerankRequest(query=query, documents=passages))
    pair_tokens = plan.usage.prompt_tokens
    shared = plan.blocks[0].prefix_len if plan.blocks else 0
    rows = {}
    for name, fn in (("reference", reference), ("lastrank", lastrank(True)), ("lastrank_no_prefix", lastrank(False))):
        fn(*warm)
        seconds, cpu, out = best_of(lambda: fn(query, passages), args.repeats)
        rows[name] = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}
        if name == "reference":
            ref_raw = out
        else:
            raw = np.empty(len(passages))
            for r in out:
                raw[r["index"]] = np.log(r["relevance_score"]) - np.log1p(-r["relevance_score"])  # logit of sigmoid
            rows[name]["max_abs_raw_diff_vs_reference"] = float(np.abs(raw - ref_raw).max())
        print(f"{name}: {seconds:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    rows["reference"]["tokens"] = reference_tokens(query, passages)
    rows["lastrank"]["tokens"] = pair_tokens - shared * (len(passages) - len(plan.blocks))
    rows["lastrank_no_prefix"]["tokens"] = pair_tokens
    result = {
        "preset": args.preset, "dtype": args.dtype, "threads": args.threads, "passages": len(passages),
        "device": {"lastrank": str(ours.device), "reference": "cpu"},
        "shared_prefix_tokens": shared, "paths": rows,
        "speedup_vs_reference_cpu": round(rows["reference"]["cpu_seconds"] / rows["lastrank"]["cpu_seconds"], 2),
        "speedup_from_prefix_cpu": round(rows["lastrank_no_prefix"]["cpu_seconds"] / rows["lastrank"]["cpu_seconds"], 2),
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    report(rows, result, args.json)
    return 0


def report(rows: dict, result: dict, json_path: Path | None) -> None:
    """The paths as a Markdown table (for docs/benchmarks.md), then the whole result as JSON (to --json too)."""
    print("| path | tokens run | wall s | CPU s |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['tokens']} | {row['seconds']} | {row['cpu_seconds']} |")
    print(json.dumps(result, indent=2))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
