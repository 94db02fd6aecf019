"""The docs still describe the code: names they cite exist, the layout lists every module, the one-line
summary is the same everywhere, and every install command can run here.

Docs drift silently when code moves (`modeling.*` and `RerankEngine` outlived their renames in
docs/benchmarks.md; docs/architecture.md's layout missed the m0 and vision files); these checks make the drift a
failing test instead.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lastrank"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_one_line_summary_is_the_same_in_the_package_and_the_cli():
    from lastrank.cli import build_parser

    summary = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    assert build_parser().description == summary + "."
    assert "rerank" in summary and "Jina Reranker V3" not in summary  # many families, not the first one only


# --- docs/architecture.md's layout ------------------------------------------------------------------------------

def layout_sections() -> dict[str, str]:
    """The layout block of docs/architecture.md as {entry: its text}: "model/", "errors.py", "benchmarks/", ...
    An entry starts at a line indented by at most two spaces; deeper lines continue it."""
    text = (ROOT / "docs/architecture.md").read_text()
    block = re.search(r"^```\nsrc/lastrank/\n(.*?)^```", text, re.S | re.M).group(1)
    sections: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        head = re.match(r"^ {0,2}(\S+)", line)
        if head:
            name = head.group(1)
            sections[name] = line
        elif name:
            sections[name] += "\n" + line
    return sections


def undocumented(sections: dict[str, str]) -> list[str]:
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if path.name in ("__init__.py", "__main__.py") or rel.parts[:2] == ("api", "dialects"):  # dialects/: one line
            continue
        section = sections.get(f"{rel.parts[0]}/" if len(rel.parts) > 1 else rel.name, "")
        if not re.search(rf"(?<![\w/]){re.escape(path.name)}\b", section):
            missing.append(str(rel))
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name not in sections.get("benchmarks/", ""):
            missing.append(f"benchmarks/{path.name}")
    return missing


def test_the_architecture_layout_names_every_module():
    assert undocumented(layout_sections()) == [], "add them to docs/architecture.md's layout"


def test_the_layout_check_sees_a_missing_file():
    sections = layout_sections()
    before = set(undocumented(sections))
    assert "qwen2_vl.py" in sections["model/"] and "images.py" in sections
    sections["model/"] = sections["model/"].replace("qwen2_vl.py", "vision.py")
    del sections["images.py"]
    assert set(undocumented(sections)) - before == {"images.py", "model/qwen2_vl.py"}


# --- names the docs cite -----------------------------------------------------------------------------------------

# Names of other projects' code (transformers, Ray, the client libraries, Linux) that the docs cite, and
# names used as examples of what a new family would add.
EXTERNAL_NAMES = {
    "AutoTokenizer", "BackPressureError", "ClientV2", "CohereRerank", "JinaRanker", "JinaRerank",
    "JinaVLForRanking", "MiniLM", "NaN", "Qwen2ForCausalLM", "Qwen2VLForConditionalGeneration",
    "Qwen2VLImageProcessor", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification", "Qwen3Model", "RayService",
    "RayTaskError", "ValueError", "VmHWM", "FooForRanking", "XLMRobertaForSequenceClassification",
}
# `x.y` in the docs: x must be a module of lastrank, a name the docs use for an object of lastrank
# (`plan.usage`, `request.deadline`), or one of these libraries and checkpoint tensor prefixes.
EXTERNAL_PREFIXES = {"torch", "os", "sys", "time", "typing", "ray", "random", "nn", "linalg", "cohere", "quantized",
                     "attention", "mlp", "mixer", "np", "F", "PIL", "transformers", "serve", "scheduler", "request",
                     "plan", "backend", "sched", "r", "reranker", "store", "settings", "app", "self", "SPEC", "gc"}


def _defined_names() -> set[str]:
    names = set()
    for folder in (SRC, ROOT / "benchmarks", ROOT / "tests"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
    return names


def _module_names() -> set[str]:
    return {"lastrank"} | {p.stem for p in SRC.rglob("*.py")} | {p.name for p in SRC.rglob("*") if p.is_dir()}


def cited_names(text: str) -> tuple[set[str], set[str]]:
    """(CamelCase names, prefixes of dotted names) inside `code spans` of a Markdown text (file names aside)."""
    spans = re.findall(r"`([^`\n]+)`", text)
    camel = {n for s in spans for n in re.findall(r"\b[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*\b", s)}
    dotted = {m.group(1) for s in spans if "/" not in s and "://" not in s
              for m in re.finditer(r"(?<![\w.-])([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b", s)
              if not re.fullmatch(r"py|md|json|jsonl|txt|tsv|trec|png|safetensors|bin|toml|yaml|db|svg|gz|sh|html|js|css"
                                  r"|ini|log|cfg|csv", m.group(2))}
    return camel, dotted


def test_the_docs_cite_only_code_that_exists():
    defined, modules = _defined_names(), _module_names()
    problems = []
    for doc in DOCS:
        camel, dotted = cited_names(doc.read_text())
        problems += [f"{doc.name}: `{n}`" for n in sorted(camel - defined - EXTERNAL_NAMES)]
        problems += [f"{doc.name}: `{p}.`" for p in sorted(dotted - modules - defined - EXTERNAL_PREFIXES)]
    assert problems == [], "names the code no longer has (or add an outside name to EXTERNAL_*)"


def test_the_citation_check_sees_retired_names():
    camel, dotted = cited_names("(`modeling.fuse_projections`, `RerankEngine(reuse_prefix=False)`, `fusion.PrefixCache`, "
                                "`benchmarks/bench_m0.py`, `report.json`)")
    assert camel == {"RerankEngine", "PrefixCache"} and dotted == {"modeling", "fusion"}
    defined, modules = _defined_names(), _module_names()
    assert "RerankEngine" not in defined and "modeling" not in modules | defined and "fusion" in modules


def test_no_install_command_needs_a_package_index_entry_for_lastrank():
    """lastrank is installed from its repository (`pip install -e '.[extra]'`); `pip install 'lastrank[...]'`
    finds nothing on an index. User-visible error messages count too."""
    found = [f"{p.relative_to(ROOT)}:{i}" for p in [*DOCS, *SRC.rglob("*.py")]
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"pip install ['\"]?lastrank\b", line)]
    assert found == []
