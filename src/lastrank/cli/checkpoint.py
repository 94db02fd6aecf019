"""`lastrank make-checkpoint`: a random-weight checkpoint in the official layout."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint (official layout) for tests and benchmarks",
                       description="Write config.json, model.safetensors and the real Qwen3 tokenizer with the Jina "
                                   "marker tokens. The weights are random: the scores mean nothing.")
    p.add_argument("path", help="output folder")
    from lastrank.model.checkpoint_causal import PRESETS as CAUSAL_PRESETS
    from lastrank.model.checkpoint_m0 import PRESETS as M0_PRESETS
    from lastrank.model.checkpoint_xlmr import PRESETS as XLMR_PRESETS

    p.add_argument("--preset", choices=["tiny", "full", *XLMR_PRESETS, *CAUSAL_PRESETS, *M0_PRESETS], default="tiny",
                   help="tiny (hidden 64, 2 layers) or full (Qwen3-0.6B shape); or an XLM-R cross-encoder: "
                        "bge-reranker-v2-m3[-tiny], jina-reranker-v2[-tiny] (full shape, or hidden 32, 2 layers); "
                        "or a causal-LM reranker: qwen3-reranker-0.6b, mxbai-rerank-base-v2 (real shapes), "
                        "qwen3-reranker[-seq-cls]-tiny, mxbai-rerank-v2-tiny; or jina-reranker-m0[-tiny] "
                        "(multimodal: the real 2.4B shape, or hidden 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="storage dtype (the official one is bfloat16)")
    p.add_argument("--model-max-length", type=int, default=131072, help="tokenizer_config.json model_max_length (drives block splitting)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY, make_checkpoint
    from lastrank.model.checkpoint_xlmr import PRESETS as XLMR_PRESETS, make_xlmr_checkpoint

    from lastrank.model.checkpoint_causal import PRESETS as CAUSAL_PRESETS, make_causal_checkpoint

    from lastrank.model.checkpoint_m0 import PRESETS as M0_PRESETS, make_m0_checkpoint

    if args.preset in M0_PRESETS:  # --model-max-length does not apply: m0's limit is its own (10,240)
        out = make_m0_checkpoint(args.path, M0_PRESETS[args.preset], seed=args.seed, dtype=args.dtype)
    elif args.preset in CAUSAL_PRESETS:
        kind, size = CAUSAL_PRESETS[args.preset]
        out = make_causal_checkpoint(args.path, kind, size, seed=args.seed, dtype=args.dtype,
                                     model_max_length=args.model_max_length)
    elif args.preset in XLMR_PRESETS:  # --model-max-length does not apply: the hub repo's tokenizer_config is used
        out = make_xlmr_checkpoint(args.path, preset=args.preset, seed=args.seed, dtype=args.dtype)
    else:
        out = make_checkpoint(args.path, preset=args.preset, seed=args.seed, dtype=args.dtype,
                              model_max_length=args.model_max_length)
    print(f"wrote {args.preset} checkpoint to {out}")
    print(f"note: {NOTICE}. The folder is marked ({RANDOM_WEIGHTS_FILE}, \"{RANDOM_WEIGHTS_KEY}\": true in "
          f"config.json), and rerank, eval and serve say so whenever they use it.", file=sys.stderr)
    return 0
