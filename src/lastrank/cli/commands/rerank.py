"""`lastrank rerank`: read the documents, load the model, print the ranking (parser: cli/rerank.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lastrank.reranker import Reranker
from lastrank.cli.argtypes import device, rerank_options
from lastrank.cli.commands import collector_paused
from lastrank.errors import InvalidRequestError
from lastrank.model.checkpoint import NOTICE, is_random_checkpoint
from lastrank.model.resolve import resolve_checkpoint
from lastrank.types import check_unicode


def _text_item(item, where: str) -> str:
    if isinstance(item, dict):
        item = item.get("text")
    if not isinstance(item, str):
        raise InvalidRequestError(f"{where}: expected a JSON string or an object with a string 'text'")
    check_unicode(where, item)  # a JSON "\udce9" escape: named by its line here, before the model loads
    return item


def _lines(text: str) -> list[str]:
    """One document per line, blank lines inside kept (as empty documents) so a document's index is its
    line number - 1; blank lines at the end are dropped (they shift no index)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _utf8(data: bytes, where: str) -> str:
    """A file's or standard input's bytes as UTF-8 text, whatever the locale: other bytes are one clear error,
    before any model is loaded (never a UnicodeDecodeError, nor lone surrogates that fail in the tokenizer)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidRequestError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                                  f"convert it to UTF-8, e.g. with iconv") from None


def read_documents(source: str) -> list[str]:
    """The documents of a .txt / .jsonl / .json file or of standard input (-), in order, read as UTF-8.

    Nothing is dropped silently: an empty source, a .json that is not an array, or an item without text is
    an InvalidRequestError naming the place."""
    if source == "-":
        stdin = getattr(sys.stdin, "buffer", None)  # None: already text (a StringIO put in its place)
        docs = _lines(_utf8(stdin.read(), "standard input") if stdin is not None else sys.stdin.read())
        where = "standard input"
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidRequestError(f"documents file {source!r} not found")
        text = _utf8(path.read_bytes(), source)
        where = source
        if path.suffix == ".json":
            try:
                items = json.loads(text) if text.strip() else []
            except json.JSONDecodeError as e:
                raise InvalidRequestError(f"{source}: not JSON ({e.msg} at line {e.lineno})") from None
            if not isinstance(items, list):
                raise InvalidRequestError(f"{source}: expected a JSON array of strings or of objects with 'text', "
                                          f"got a JSON {type(items).__name__}; for one document per line use .jsonl")
            docs = [_text_item(item, f"{source}[{i}]") for i, item in enumerate(items)]
        elif path.suffix == ".jsonl":
            docs = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidRequestError(f"{source}:{n}: not JSON ({e.msg})") from None
                docs.append(_text_item(item, f"{source}:{n}"))
        else:
            docs = _lines(text)
    if not docs:
        raise InvalidRequestError(f"{where}: no documents to rank (it is empty)")
    return docs


def run(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.query_image is None):
        raise InvalidRequestError("give the query as --query TEXT or --query-image PATH (one of them)")
    if args.documents is None and not args.image:
        raise InvalidRequestError("give documents: --documents FILE and/or --image PATH")
    try:  # the spelling now, before anything is read or imported; whether this machine has it: at load
        args.device = device(args.device)
    except argparse.ArgumentTypeError as e:
        raise InvalidRequestError(f"--device: {e}") from None
    for flag, text in (("--query", args.query), ("--instruction", args.instruction)):
        if text is not None:
            check_unicode(flag, text)  # argv bytes that are not UTF-8 arrive as lone surrogates
    documents = read_documents(args.documents) if args.documents is not None else []
    resolve_checkpoint(args.model)  # a missing folder or an offline hub id fails here, before torch is imported
    options = rerank_options(args)
    with collector_paused():  # the first load's objects live as long as the process: not the collector's work
        reranker = Reranker(args.model, device=args.device, dtype=args.dtype)
    choice = getattr(reranker.backend, "dtype_choice", None)
    if choice is not None and choice.requested == "auto":  # what auto picked on this machine, and why
        print(f"lastrank: {choice.describe()}", file=sys.stderr)
    if choice is not None and choice.warning:  # e.g. int8 on a CPU without VNNI (model/int8.py: speed_note)
        print(f"lastrank: warning: {choice.warning}", file=sys.stderr)
    if is_random_checkpoint(reranker.path):
        print(f"lastrank: warning: {reranker.path} holds {NOTICE}", file=sys.stderr)
    blank = sum(1 for d in documents if not d.strip())
    if blank and not args.documents.endswith((".json", ".jsonl")):
        print(f"lastrank: note: {blank} blank line(s) ranked as empty documents, so that [index] stays the "
              f"0-based line number", file=sys.stderr)
    documents = documents + [Path(p) for p in args.image]  # Reranker.rerank: a Path is an image
    query = Path(args.query_image) if args.query_image is not None else args.query
    results = reranker.rerank(query, documents, **options)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "embedding"} for r in results], ensure_ascii=False, indent=2))
        return 0
    for rank, r in enumerate(results, 1):
        span = r.get("span")
        doc = (r["document"][span[0]:span[1]] if span else r["document"]).replace("\n", " ")
        where = f" {span[0]}-{span[1]}" if span else ""
        print(f"{rank:>4}  {r['relevance_score']:+.4f}  [{r['index']}{where}]  {doc[:100]}{'…' if len(doc) > 100 else ''}")
    return 0
