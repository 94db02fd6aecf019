"""`lastrank bench`: lastrank's engine against the reference path, on this machine, in one run.

For each case (a ~2K-token block, a ~8K-token block, a 100-document TREC-DL request, and a small
10-document request; --quick shrinks the blocks to ~512 and ~1K tokens) it prints, labelling each block
case by its real prompt size:
  - the reference path's tokens/s: transformers' Qwen3Model + the projector in bf16 with SDPA, the official
    forward (hidden states at the marker tokens through the projector) on the very same block prompts
    (token ids from lastrank's plan). It lives in the repository, benchmarks/reference_path.py, beside the
    `test` extra that declares transformers, not in the installed package; without the file (a non-editable
    install: --reference FILE) or without transformers the bench runs without it and says why;
  - lastrank's tokens/s for `Reranker.rerank` end to end (tokenization, plan, forward, merge);
  - their ratio, measured interleaved (ref, lastrank, ref, lastrank, ...) so that load on the machine hits
    both alike, and the best (minimum) time of each is compared;
  - the fraction of the bf16 roofline: the machine's own bf16 matmul rate (a big torch.matmul, measured
    here) divided into the FLOPs of the full forward (linear layers + causal attention, official work,
    including the tokens lastrank skips);
  - peak RSS of a fresh process that loads the model and serves the case once (resource.getrusage);
and once: the cold start of a fresh process, import -> Reranker(...) -> first result of a small request.

Tokens/s always counts the full prompt tokens (plan.usage.prompt_tokens). Nothing here is a test: speed
never fails anything. `benchmarks/bench_engine.py` runs the same code.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lastrank.families import FAMILIES, JINA_V3

DEFAULT_FULL_CHECKPOINT = Path(tempfile.gettempdir()) / "lastrank-bench-full"

# The family this module's own cases measure (its block prompts, its merge).
BUILT_IN_FAMILY = JINA_V3.name


def family_benches() -> dict[str, str]:
    """The other families' cases: benchmarks/<FamilySpec.bench_script> (lastrank vs the official padded path at
    the real shape: one TREC-DL query and its 100 passages; for jina-m0 one query and 20 image documents), run
    by `lastrank bench --family NAME` as they are."""
    return {spec.name: spec.bench_script for spec in FAMILIES if spec.bench_script}



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the engine against the transformers reference path",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(handler="lastrank.cli.commands.bench:run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help=f"checkpoint folder (default: a random full-size one, made on first use "
                                        f"under {DEFAULT_FULL_CHECKPOINT}; --quick: a tiny one)")
    p.add_argument("--quick", action="store_true",
                   help="tiny model and small cases: a smoke test, not a measurement (minutes, not seconds: it still "
                        "runs the reference path and fresh processes for cold start and peak RSS)")
    p.add_argument("--cases", default="2k,8k,trec,small,pack",
                   help="comma-separated: 2k, 8k, trec, small, pack (default: all). 2k, 8k: one block of about "
                        "2,048 / 8,192 prompt tokens (--quick: 512 / 1,024), labelled in the output by its real "
                        "token count. small: the TREC query with its "
                        "first 10 candidates. pack: the backend's run_blocks on 4 small blocks from 4 requests, packed into "
                        "one forward vs one forward per block (the CPU default)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each path per case, interleaved (default 2)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:N]: both paths, the matmul rate and the probes run there. On a GPU "
                        "compare the wall-time ratio (process CPU time then measures the launching thread)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--data", help="TREC-DL folder with queries.jsonl, corpus.jsonl, run.bm25.trec "
                                  "(default: the bundled trec-dl-2019, else synthetic text)")
    p.add_argument("--no-reference", action="store_true", help="skip the transformers reference path")
    p.add_argument("--reference", metavar="FILE",
                   help="the reference path's file (default: benchmarks/reference_path.py of the source checkout "
                        "lastrank is installed from, else of the working directory)")
    p.add_argument("--no-subprocess", action="store_true", help="skip cold start and peak RSS (fresh processes)")
    scripts = family_benches()
    p.add_argument("--family", default=BUILT_IN_FAMILY, choices=[BUILT_IN_FAMILY, *scripts],
                   help=f"{BUILT_IN_FAMILY}: the cases below; "
                        + ", ".join(f"{name}: benchmarks/{script}" for name, script in scripts.items())
                        + " (lastrank vs the official padded path at the real shape, random weights)")
    p.add_argument("--preset", default=None,
                   help="with --family: the make-checkpoint preset (default: the script's; lastrank make-checkpoint "
                        "--help lists them by family)")
    p.add_argument("--pack-blocks", choices=["auto", "on", "off"], default="auto",
                   help="the backend's pack_blocks option (auto: on CUDA only)")
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="run every prompt whole, without the cached system-turn prefix (an A/B of that option; "
                        "the fresh processes for cold start and peak RSS keep the default)")
    p.add_argument("--compile", action="store_true",
                   help="opt-in torch.compile path (Reranker(compile=True); LASTRANK_COMPILE=1 in the fresh processes), "
                        "with a fresh compile cache for this run: "
                        "cold start is then reported twice, cache filling and cache warm")
    p.add_argument("--json", help="also write the results to this file")
