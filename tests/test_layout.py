"""The test suite's own rules, checked over the source (AST, no imports):
  - the parity references (tests/support/reference_*.py) import nothing from lastrank, so a mistake in lastrank
    cannot be shared by the code it is checked against;
  - the shared helpers live in the package tests/support and are imported as `support.x`, tests/ being on sys.path
    through pyproject.toml's `pythonpath` (one place); no test module edits sys.path itself."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"


def lastrank_imports(source: str) -> list[str]:
    """Every module of lastrank the source imports: import statements at any depth, and importlib.import_module /
    __import__ calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return sorted(m for m in found if m == "lastrank" or m.startswith("lastrank."))


def sys_path_edits(source: str) -> list[int]:
    """Lines that change sys.path: sys.path.insert / append / extend / ..., or an assignment to it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if (isinstance(target, ast.Attribute) and target.attr == "path" and isinstance(target.value, ast.Name)
                and target.value.id == "sys"):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_checks_see_what_they_look_for():
    assert lastrank_imports("import lastrank.model\nfrom lastrank.types import X\n"
                            "def f():\n    import importlib\n    importlib.import_module('lastrank.errors')\n") == \
        ["lastrank.errors", "lastrank.model", "lastrank.types"]
    assert lastrank_imports("import lastrankish\nfrom transformers import AutoModel\n") == []
    assert sys_path_edits("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\nprint(sys.path)\n") == [2, 3]


def test_the_references_import_nothing_from_lastrank():
    references = sorted(SUPPORT.glob("reference_*.py"))
    assert {p.name for p in references} >= {"reference_impl.py", "reference_m0.py", "reference_xlmr.py"}
    for path in references:
        assert lastrank_imports(path.read_text(encoding="utf-8")) == [], path.name


def test_no_test_module_edits_sys_path():
    edits = {}
    for path in TESTS.rglob("*.py"):
        rel = path.relative_to(TESTS).as_posix()
        if lines := sys_path_edits(path.read_text(encoding="utf-8")):
            edits[rel] = lines
    assert edits == {}, "import the helpers as support.x: tests/ is on sys.path (pyproject.toml pythonpath)"
