"""`lastrank make-checkpoint`: a random-weight checkpoint in the official layout.

The presets are lastrank/checkpoints/'s table, by family: this command lists and writes them and knows no
family."""

from __future__ import annotations

import argparse

from lastrank.checkpoints import ALIASES, presets
from lastrank.families import FAMILIES


def register(sub: argparse._SubParsersAction) -> None:
    by_family = "; ".join(f"{spec.name}: " + ", ".join(f"{name} ({p.about})" for name, p in presets(spec).items())
                          for spec in FAMILIES if presets(spec))
    p = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint (official layout) for tests and benchmarks",
                       description="Write a model folder in a family's official layout (config.json, the weights, "
                                   "the real tokenizer files). The weights are random: the scores mean nothing.")
    p.add_argument("path", help="output folder")
    p.add_argument("--preset", choices=[name for spec in FAMILIES for name in presets(spec)] + list(ALIASES),
                   default="jina-v3-tiny", metavar="PRESET",
                   help=f"default: jina-v3-tiny. By family: {by_family}. Old names: "
                        + ", ".join(f"{old} = {new}" for old, new in ALIASES.items()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="storage dtype (the official one is bfloat16)")
    p.add_argument("--model-max-length", type=int, default=131072,
                   help="tokenizer_config.json model_max_length (drives jina-v3's block splitting; causal-lm's "
                        "tokenizer too; the other families keep their own)")
    p.set_defaults(handler="lastrank.cli.commands.checkpoint:run")
