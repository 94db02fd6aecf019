"""`lastrank eval`: nDCG@10 / RR@10 / R@100 of a reranker over a first-stage run, and the
input-order (permutation) study of the paper."""

from __future__ import annotations

import argparse

ORDER_CHOICES = ["given", "descending", "ascending", "random", "all"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a reranker on a retrieval test set",
        description="Rerank each query's first-stage top-k and report nDCG@10, RR@10 and R@100 (ir_measures) "
        "for the first stage and the reranked run. Results are cached per query in the output folder, so "
        "rerunning the same command continues an interrupted run.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="hub id or local checkpoint folder (runs in this process)")
    src.add_argument("--server", metavar="URL", help="base URL of a running `lastrank serve`")
    p.add_argument("--api-key", help="API key for --server")
    p.add_argument("--served-model", metavar="NAME",
                   help="with --server: which of the server's models (an id of its /v1/models; needed when it "
                        "serves several)")
    p.add_argument("--data", required=True,
                   help="a bundled data set by name (trec-dl-2019, trec-dl-2020, noveleval-2306), its long-page "
                        "variant (trec-dl-2019-long: each candidate among 7 unrelated passages at a random place; "
                        "-long-end: always last; see lastrank/eval/long.py) or a folder: lastrank layout "
                        "(qrels.tsv) or BEIR (qrels/<split>.tsv)")
    p.add_argument("--run", help="TREC run file of first-stage candidates (default: the folder's run.*.trec)")
    p.add_argument("--split", default="test", help="BEIR qrels split (default: test)")
    p.add_argument("--top-k", type=int, default=100, help="candidates reranked per query (default: 100)")
    p.add_argument("--order", choices=ORDER_CHOICES, default="given",
                   help="input order of the candidates in the prompt; 'all' = descending, ascending and random")
    p.add_argument("--seed", type=int, default=0, help="seed for random orders and permutations")
    p.add_argument("--queries", type=int, default=None, metavar="N", help="only the first N judged queries")
    p.add_argument("--permutations", type=int, default=0, metavar="N",
                   help="instead of the order study: rerank one query under N random input orders")
    p.add_argument("--query-id", help="query for --permutations (default: the first judged query)")
    p.add_argument("--rel-min", type=int, default=None,
                   help="grade counted relevant by RR@10 and R@100 (default: 2 on 0-3 scales as TREC-DL, else 1)")
    p.add_argument("--max-doc-length", type=int, default=None, help="passed to rerank() (default: the family's, 2048 for jina-v3)")
    p.add_argument("--max-query-length", type=int, default=None, help="passed to rerank() (default: the family's, 512 for jina-v3)")
    p.add_argument("--chunking", choices=["truncate", "chunk"], default="truncate",
                   help="long documents: cut at max-doc-length (truncate, default) or rank every window of it and "
                        "score a document by its best (chunk)")
    p.add_argument("--chunk-overlap", type=int, default=None, metavar="TOKENS",
                   help="with --chunking chunk: tokens shared by consecutive windows (default: window // 8)")
    p.add_argument("--out", help="output folder (default: ./runs/eval-<dataset>-<UTC timestamp>, or the newest "
                                 "unfinished one made by the same command)")
    p.add_argument("--no-resume", action="store_true", help="with no --out, start a new folder even if an unfinished one matches")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (in-process only)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "int8"],
                   help="in-process only; int8: opt-in, encoder families (docs/benchmarks.md, int8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler="lastrank.cli.commands.eval:run")
