"""The layers hold: every import inside src/lastrank runs down the contract, and no modules import in a circle.

The contract (docs/architecture.md, "Layers"), highest floor first:

    cli > router > api > reranker (reranker.py, client.py, the package) > checkpoints > families > engine
        > types > model, store, eval > images > errors

A module may import its own floor's package and any floor below; modules on one floor but in different packages
(model, store, eval) are independent. Imports made inside functions count as much as top-level ones: a lazy
import hides an arrow from readers, not from this test. Cycles are looked for between modules, lazy imports
included.

ALLOWED lists today's exceptions, each with its reason; it only shrinks. The goal is an empty list.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lastrank"

# Highest first. A floor holds one or more packages; a module belongs to the package of the longest prefix
# listed. Packages of one floor may not import each other.
FLOORS: list[tuple[tuple[str, ...], ...]] = [
    (("lastrank.__main__",),),
    (("lastrank.cli",),),
    (("lastrank.router",),),  # served models backed by providers: speaks api's dialects, builds its ServedModels
    (("lastrank.api",),),
    (("lastrank", "lastrank.reranker", "lastrank.client"),),  # the public Python API
    (("lastrank.checkpoints",),),
    (("lastrank.families",),),
    (("lastrank.engine",),),
    (("lastrank.types",),),
    (("lastrank.model",), ("lastrank.store",), ("lastrank.eval",)),
    (("lastrank.images",),),
    (("lastrank.errors",),),
]

# (importer, imported): why it still runs up. Shrink this; never grow it without a reason a reviewer accepts.
ALLOWED: dict[tuple[str, str], str] = {
}

# Circles between modules of one package still allowed: {the modules: why}.
ALLOWED_CYCLES: dict[frozenset[str], str] = {
}

# Function-level imports of lastrank's own modules: allowed where torch (or another heavy import) must stay out
# of a light command or of `import lastrank`, and no table of names can carry it instead. This ceiling is
# today's count (cli/commands/serve.py's --device check: torch, for cuda/mps only); it may only go down.
MAX_FUNCTION_LEVEL = 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The lastrank modules one import statement names (`from lastrank.x import y`: lastrank.x.y if that is a
    module, else lastrank.x)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return [n for n in names if n == "lastrank" or n.startswith("lastrank.")]


@functools.cache
def import_graph() -> tuple[dict[tuple[str, str], list[int]], int]:
    """{(importer, imported): line numbers}, and the number of function-level import statements of lastrank
    modules."""
    edges: dict[tuple[str, str], list[int]] = {}
    function_level = 0
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in tree.body}
        for block in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level are module level too
            if isinstance(block, (ast.If, ast.Try)):
                top |= {id(node) for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [t for t in imported(module, path, node) if t != module]
                if targets and id(node) not in top:
                    function_level += 1
                for target in targets:
                    edges.setdefault((module, target), []).append(node.lineno)
    return edges, function_level


def floor(module: str) -> tuple[int, int]:
    """(floor index, 0 = highest; the index of the module's package on that floor)."""
    best = None
    for index, packages in enumerate(FLOORS):
        for package, prefixes in enumerate(packages):
            for prefix in prefixes:
                if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[2]):
                    best = (index, package, len(prefix))
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[:2]


def wrong_way(edges) -> dict[tuple[str, str], list[int]]:
    """Imports that run up the floors, or across to another package of the same floor."""
    bad = {}
    for (importer, target), lines in edges.items():
        (mine, my_package), (theirs, their_package) = floor(importer), floor(target)
        if theirs < mine or (theirs == mine and their_package != my_package):
            bad[(importer, target)] = lines
    return bad


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for importer, target in edges:
        if target in MODULES:
            graph.setdefault(importer, set()).add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_on_a_floor():
    for module in MODULES:
        floor(module)


def test_no_import_runs_up_the_layers():
    edges, _ = import_graph()
    bad = wrong_way(edges)
    new = {f"{a} -> {b} (line {', '.join(map(str, bad[(a, b)]))})" for (a, b) in bad if (a, b) not in ALLOWED}
    assert not new, f"imports that run up the layers (move the code, or the import, down): {sorted(new)}"
    stale = [pair for pair in ALLOWED if pair not in bad]
    assert not stale, f"fixed: remove from ALLOWED {stale}"


def test_no_modules_import_in_a_circle():
    edges, _ = import_graph()
    found = {frozenset(c) for c in cycles(edges)}
    assert not found - set(ALLOWED_CYCLES), f"import circles: {[sorted(c) for c in found - set(ALLOWED_CYCLES)]}"
    assert not set(ALLOWED_CYCLES) - found, "fixed: remove from ALLOWED_CYCLES"


def test_function_level_imports_of_lastrank_do_not_grow():
    _, function_level = import_graph()
    assert function_level <= MAX_FUNCTION_LEVEL, (
        f"{function_level} function-level imports of lastrank modules (ceiling {MAX_FUNCTION_LEVEL}): import at "
        "the top unless torch must stay out of a light command")


def test_the_checks_see_an_import_up_and_a_circle():
    edges = {("lastrank.model.bert", "lastrank.families.causal_lm"): [1],
             ("lastrank.engine.pairs", "lastrank.engine.backend"): [1],
             ("lastrank.engine.backend", "lastrank.engine.pairs"): [2],
             ("lastrank.store.db", "lastrank.eval.data"): [3],
             ("lastrank.api.app", "lastrank.errors"): [4]}
    assert set(wrong_way(edges)) == {("lastrank.model.bert", "lastrank.families.causal_lm"),
                                     ("lastrank.store.db", "lastrank.eval.data")}
    assert cycles(edges) == [["lastrank.engine.backend", "lastrank.engine.pairs"]]
