"""`lastrank make-checkpoint`: write the preset asked for (parser: cli/checkpoint.py)."""

from __future__ import annotations

import argparse
import sys

from lastrank.checkpoints import preset
from lastrank.model.checkpoint import NOTICE, RANDOM_WEIGHTS_FILE, RANDOM_WEIGHTS_KEY


def run(args: argparse.Namespace) -> int:
    _, chosen = preset(args.preset)
    out = chosen.write(args.path, seed=args.seed, dtype=args.dtype, model_max_length=args.model_max_length)
    print(f"wrote {args.preset} checkpoint to {out}")
    print(f"note: {NOTICE}. The folder is marked ({RANDOM_WEIGHTS_FILE}, \"{RANDOM_WEIGHTS_KEY}\": true in "
          f"config.json), and rerank, eval and serve say so whenever they use it.", file=sys.stderr)
    return 0
