"""`lastrank` command line. Each subcommand lives in its own module with `register(subparsers)`.

Modules import heavy libraries (torch, fastapi) inside their handlers, so `lastrank keys list` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lastrank.errors import LastrankError

# `lastrank --help`'s first line: pyproject.toml's one-line summary, word for word (tests/test_docs_hold.py)
DESCRIPTION = ("A self-hosted rerank engine and API server: open rerankers (Jina v3 and m0, Qwen3-Reranker, mxbai, "
               "bge, sentence-transformers) behind the Jina, Cohere and TEI rerank APIs")

# module name under lastrank.cli, in the order `--help` lists them
SUBCOMMAND_MODULES = ["rerank", "checkpoint", "serve", "keys", "usage", "eval", "bench"]


def build_parser() -> argparse.ArgumentParser:
    from lastrank import __version__

    parser = argparse.ArgumentParser(prog="lastrank", description=DESCRIPTION + ".")
    parser.add_argument("--version", action="version", version=f"lastrank {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"lastrank.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand still being written; never hides other import errors
            if e.name != f"lastrank.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # building the parser reads the LASTRANK_* environment (serve's flag defaults): a bad value is one
        # line here, for every command (even --version), rather than a traceback
        parser = build_parser()
    except LastrankError as e:
        print(f"lastrank: error: {e.message}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LastrankError as e:
        print(f"lastrank: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
