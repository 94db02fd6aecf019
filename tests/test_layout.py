"""The test suite's own rules, checked over the source (AST, no imports):
  - the parity references (tests/support/reference_*.py) import nothing from lastrank, directly or through the
    support modules they import, so a mistake in lastrank cannot be shared by the code it is checked against;
  - the shared helpers live in the package tests/support and are imported as `support.x`, tests/ being on sys.path
    through pyproject.toml's `pythonpath` (one place); no test module edits sys.path itself, and nothing imports
    a test module or a conftest."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"


def imported_modules(source: str, module: str = "", names: bool = False) -> list[str]:
    """Every module the source (the module named `module`) imports: import statements at any depth, a relative
    one resolved against `module`, and importlib.import_module / __import__ calls with a literal name. With
    `names`, `from x import y` gives x.y too (y may be a module)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*module.split(".")[:-node.level], *([node.module] if node.module else [])]) \
                if node.level else node.module
            found += [base, *(f"{base}.{a.name}" for a in node.names if names)]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return sorted(set(found))


def lastrank_imports(source: str, module: str = "") -> list[str]:
    """Every module of lastrank the source imports."""
    return [m for m in imported_modules(source, module) if m == "lastrank" or m.startswith("lastrank.")]


def support_closure(path: Path) -> list[Path]:
    """`path` and every module of tests/support it imports, directly or through another support module."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            for name in imported_modules(current.read_text(encoding="utf-8"), f"support.{current.stem}", names=True):
                parts = name.split(".")
                if parts[0] == "support" and len(parts) > 1 and (SUPPORT / f"{parts[1]}.py").exists():
                    todo.append(SUPPORT / f"{parts[1]}.py")
    return sorted(seen)


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
    assert lastrank_imports("from .. import x\nfrom .y import z\n", "lastrank.api.app") == ["lastrank", "lastrank.api.y"]
    assert sys_path_edits("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\nprint(sys.path)\n") == [2, 3]


def test_the_references_import_nothing_from_lastrank():
    """Directly, or through a support module they import (reference_impl.py uses ranking_order.py)."""
    references = sorted(SUPPORT.glob("reference_*.py"))
    assert {p.name for p in references} >= {"reference_impl.py", "reference_m0.py", "reference_xlmr.py"}
    for reference in references:
        for path in support_closure(reference):
            found = lastrank_imports(path.read_text(encoding="utf-8"), f"support.{path.stem}")
            assert found == [], f"{reference.name} via {path.name}"


def test_the_closure_follows_the_support_modules_a_reference_imports():
    assert [p.name for p in support_closure(SUPPORT / "reference_impl.py")] == \
        ["ranking_order.py", "reference_impl.py"]
    assert imported_modules("from . import ranking_order\nfrom .server_process import free_port\n",
                            "support.postgres_server", names=True) == \
        ["support", "support.ranking_order", "support.server_process", "support.server_process.free_port"]


def test_the_shared_helpers_live_in_tests_support():
    """A test folder holds test modules and its conftest.py only: what more than one test needs is a module of
    tests/support, imported as `from support.<module> import ...`."""
    loose = [p.relative_to(TESTS).as_posix() for p in TESTS.rglob("*.py")
             if SUPPORT not in p.parents and not (p.name.startswith("test_") or p.name == "conftest.py")]
    assert loose == [], "move them to tests/support"


def test_nothing_imports_a_test_module_or_a_conftest():
    """What a test module or a benchmark shares with another lives in tests/support: importing a test module runs
    its fixtures' imports, and `import conftest` gets whichever conftest pytest loaded last."""
    found = {}
    for path in [*TESTS.rglob("*.py"), *(TESTS.parent / "benchmarks").glob("*.py")]:
        names = [m for m in imported_modules(path.read_text(encoding="utf-8"))
                 if any(part.startswith("test_") or part == "conftest" for part in m.split("."))]
        if names:
            found[path.relative_to(TESTS.parent).as_posix()] = names
    assert found == {}, "move what they share to tests/support"


def test_no_test_module_edits_sys_path():
    edits = {}
    for path in TESTS.rglob("*.py"):
        rel = path.relative_to(TESTS).as_posix()
        if lines := sys_path_edits(path.read_text(encoding="utf-8")):
            edits[rel] = lines
    assert edits == {}, "import the helpers as support.x: tests/ is on sys.path (pyproject.toml pythonpath)"
