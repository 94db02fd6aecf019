"""`lastrank rerank`: rank documents from a file with a local model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="rank documents for a query", description="Rank documents for a query with a local model.")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                   help="hub id, short name (minilm) or local model folder (default: %(default)s, real weights "
                        "that ship offline)")
    p.add_argument("--query", default=None, help="the query text (required unless --query-image)")
    p.add_argument("--query-image", default=None, metavar="PATH",
                   help="multimodal models (jina-reranker-m0): the query is this image file")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="multimodal models: an image document (repeatable), ranked with the --documents ones; its "
                        "[index] follows theirs")
    p.add_argument("--documents", default=None,
                   help="a .txt file or - for standard input (one document per line; [index] is the 0-based line "
                        "number, so a blank line inside the file is an empty document and blank lines at the end "
                        "are ignored), a .jsonl file (one JSON string, or object with a 'text' field, per line; "
                        "blank lines skipped) or a .json file (an array of strings or of objects with 'text')")
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--instruction", default=None)
    p.add_argument("--max-doc-length", type=int, default=None,
                   help="token limit per document (default: the family's official one, e.g. 2048 for jina-v3)")
    p.add_argument("--max-query-length", type=int, default=None,
                   help="token limit of the query (default: the family's official one, e.g. 512 for jina-v3)")
    p.add_argument("--chunking", choices=["truncate", "chunk"], default="truncate",
                   help="a document over --max-doc-length tokens: cut it there (truncate, default) or rank every "
                        "window of that many tokens and score it by its best (chunk)")
    p.add_argument("--chunk-overlap", type=int, default=None, metavar="TOKENS",
                   help="with --chunking chunk: tokens shared by consecutive windows (default: window // 8)")
    p.add_argument("--max-chunks-per-doc", type=int, default=None, metavar="N",
                   help="with --chunking chunk: rank only the first N windows of a document")
    p.add_argument("--spans", action="store_true",
                   help="with --chunking chunk: show where each document's best window is ([start, end) characters)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "int8"],
                   help="auto (default): the fastest type on this machine whose scores stay within 0.02 of "
                        "float32's, measured once per machine and model and cached (said on stderr); float32: "
                        "exact; int8: opt-in, for the bi-encoder and cross-encoder families (docs/benchmarks.md, int8)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler="lastrank.cli.commands.rerank:run")
