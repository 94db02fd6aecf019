"""User-facing text points at nothing outside the repository (item 8 of the newcomer issue).

A user sees the README and docs/, every CLI help text, every string the code can print or return (error
messages, notes) and the OpenAPI document behind /docs. None of them may cite the project's private notes
("§5 of model-spec", "issue 5", ../shared/...). Docstrings are for developers and are not scanned here;
they cite only docs/ files that exist in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = re.compile(r"model-spec|model_spec|api-compat|style-anchors|model-families\.md|§|\bissues? \d+\b|"
                      r"shared/(docs|data)|\.\./shared", re.IGNORECASE)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _hits(text: str) -> list[str]:
    return [m.group(0) for m in EXTERNAL.finditer(text)]


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
                                 "src/lastrank/eval/datasets/README.md"])
def test_documents_are_self_contained(doc):
    assert _hits((ROOT / doc).read_text(encoding="utf-8")) == []


def test_strings_in_the_code_are_self_contained():
    found = []
    for path in sorted((ROOT / "src" / "lastrank").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {h}" for h in _hits(node.value)]
    assert found == []


def test_cli_help_and_openapi_are_self_contained():
    import argparse

    from lastrank.api.app import create_app
    from lastrank.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._actions:  # argparse keeps subparsers here; no public accessor exists
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    assert len(texts) > 5
    import json

    texts.append(json.dumps(create_app().openapi()))
    assert [h for t in texts for h in _hits(t)] == []
