"""`lastrank rerank`: rank documents from a file with a local model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lastrank.errors import InvalidRequestError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="rank documents for a query", description="Rank documents for a query with a local model.")
    p.add_argument("--model", default="jinaai/jina-reranker-v3", help="hub id or local checkpoint folder")
    p.add_argument("--query", required=True)
    p.add_argument("--documents", required=True,
                   help="a .jsonl file (one JSON string, or object with a 'text' field, per line), a .txt file "
                        "(one document per line), or - for standard input (lines)")
    p.add_argument("--top-n", type=int, default=None)
    p.add_argument("--instruction", default=None)
    p.add_argument("--max-doc-length", type=int, default=2048)
    p.add_argument("--max-query-length", type=int, default=512)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def read_documents(source: str) -> list[str]:
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(source)
    if not path.is_file():
        raise InvalidRequestError(f"documents file {source!r} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        return [line for line in text.splitlines() if line.strip()]
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"{source}:{n}: not JSON ({e.msg})") from None
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            raise InvalidRequestError(f"{source}:{n}: expected a JSON string or an object with a string 'text'")
        docs.append(item)
    return docs


def run(args: argparse.Namespace) -> int:
    documents = read_documents(args.documents)
    from lastrank import Reranker

    reranker = Reranker(args.model, device=args.device, dtype=args.dtype)
    results = reranker.rerank(args.query, documents, top_n=args.top_n, instruction=args.instruction,
                              max_doc_length=args.max_doc_length, max_query_length=args.max_query_length)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "embedding"} for r in results], ensure_ascii=False, indent=2))
        return 0
    for rank, r in enumerate(results, 1):
        doc = r["document"].replace("\n", " ")
        print(f"{rank:>4}  {r['relevance_score']:+.4f}  [{r['index']}]  {doc[:100]}{'…' if len(doc) > 100 else ''}")
    return 0
