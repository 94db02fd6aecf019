#!/usr/bin/env python
"""Engine benchmark: the same code as `lastrank bench` (src/lastrank/cli/bench.py, cli/commands/bench.py), as a script.

    python benchmarks/bench_engine.py                 # full-size random checkpoint, 2K / 8K / TREC-DL cases
    python benchmarks/bench_engine.py --quick         # tiny model, seconds
    python benchmarks/bench_engine.py --help

Results and the conditions they were measured under: docs/benchmarks.md.
"""

import argparse
import sys

from lastrank.cli.bench import add_arguments
from lastrank.cli.commands.bench import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench_engine.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
