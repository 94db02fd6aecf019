"""`lastrank` command line, as a table (the command registries of pip and git work this way).

Each subcommand has a parser module here (rerank.py, serve.py, ...: `register(subparsers)`) that imports no
heavy library, so `lastrank --help` and every subcommand's `--help` stay fast, and one handler module under
commands/ that imports what it needs at the top. A parser names its handler as data, "module:function" in
the parser's defaults (`handler=`); main() imports that one module after parsing, here and nowhere else.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lastrank import __version__
from lastrank.errors import LastrankError
from lastrank.families import Lazy

# `lastrank --help`'s first line: pyproject.toml's one-line summary, word for word (tests/test_docs_hold.py)
DESCRIPTION = ("A self-hosted rerank engine and API server: open rerankers (Jina v3 and m0, Qwen3-Reranker, mxbai, "
               "bge, sentence-transformers) behind the Jina, Cohere and TEI rerank APIs")

# parser module name under lastrank.cli, in the order `--help` lists them
SUBCOMMAND_MODULES = ["rerank", "checkpoint", "serve", "keys", "usage", "eval", "bench"]


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error of the CLI: `lastrank: error: ...`,
    naming the command's --help (argparse prints its usage, often several lines, and then `lastrank rerank:
    error: ...`). Subcommands' parsers are of this class too (add_subparsers uses the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"lastrank: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lastrank", description=DESCRIPTION + ".")
    parser.add_argument("--version", action="version", version=f"lastrank {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"lastrank.cli.{name}").register(sub)
    parser.commands = sub.choices  # name -> the subcommand's parser (main: whose --help an error names)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # building the parser reads the LASTRANK_* environment (serve's flag defaults): a bad value is one
        # line here, for every command (even --version), rather than a traceback
        parser = build_parser()
    except LastrankError as e:
        print(f"lastrank: error: {e.message}", file=sys.stderr)
        return 2
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # parse_args would report these from the top parser, naming `lastrank --help`
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(Lazy.named(args.handler)(args) or 0)  # e.g. "lastrank.cli.commands.serve:run"
    except LastrankError as e:
        print(f"lastrank: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
