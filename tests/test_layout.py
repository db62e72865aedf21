"""The package layout: no import cycles, data flowing one way, and docs that stand on their own.

The import graph is read statically (every `import` statement, including the ones inside functions) from the
sources of `sddr_jax/`, `datasets/` (installed as `sddr_jax_datasets`) and `configs/` (`sddr_jax_configs`).
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOTS = {"sddr_jax": REPO / "sddr_jax", "sddr_jax_datasets": REPO / "datasets", "sddr_jax_configs": REPO / "configs"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg, root in ROOTS.items():
        for f in root.rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that `name` (a dotted import target) names or lies in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            r = _resolve(t)
            if r is not None and r != module:
                out.add(r)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _with_parents(graph):
    """Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first: add those edges."""
    g = {m: set(v) for m, v in graph.items()}
    for m in graph:
        for dep in list(g[m]):
            parts = dep.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and parent != m and not m.startswith(parent + "."):
                    g[m].add(parent)
    return g


def _reachable(graph, start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for d in graph[stack.pop()]:
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


def test_the_graph_is_read():
    assert "sddr_jax.training.train" in GRAPH["sddr_jax.commands.train"] or any(
        d.startswith("sddr_jax.training") for d in GRAPH["sddr_jax.commands.train"])
    assert "sddr_jax.inference.windows" in GRAPH["sddr_jax.inference.two_stage"]
    assert "sddr_jax.errors" in GRAPH["sddr_jax_datasets.common"]


def test_no_import_cycles():
    graph = _with_parents(GRAPH)
    cycles = []
    for m in graph:
        if m in _reachable(graph, m):
            cycles.append(m)
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


@pytest.mark.parametrize("stage", ["sddr_jax.inference", "sddr_jax.eval", "sddr_jax.data", "sddr_jax.models",
                                   "sddr_jax.convert", "sddr_jax.checkpoints"])
def test_inference_eval_and_data_never_import_training(stage):
    members = [m for m in MODULES if m == stage or m.startswith(stage + ".")]
    assert members, stage
    for m in members:
        bad = sorted(d for d in _reachable(GRAPH, m) if d.startswith("sddr_jax.training"))
        assert not bad, f"{m} imports training ({bad})"


def test_the_library_never_imports_commands():
    for m in MODULES:
        if m.startswith(("sddr_jax.commands", "sddr_jax.cli", "sddr_jax.__main__")):
            continue
        bad = sorted(d for d in GRAPH[m] if d.startswith("sddr_jax.commands") or d == "sddr_jax.cli")
        assert not bad, f"{m} imports the CLI ({bad})"


def test_stages_import_as_packages():
    import importlib

    for name in ("sddr_jax.inference", "sddr_jax.training", "sddr_jax.data", "sddr_jax.eval", "sddr_jax.convert"):
        importlib.import_module(name)
    import sddr_jax

    assert callable(sddr_jax.refine_one_stage) and callable(sddr_jax.refine_two_stage)


def test_no_reference_to_the_private_design_document():
    pattern = re.compile(r"\bspec\s+[0-9]", re.IGNORECASE)
    hits = []
    for root in (REPO / "sddr_jax", REPO / "docs"):
        for f in root.rglob("*"):
            if f.suffix in (".py", ".md") and f.is_file():
                for i, line in enumerate(f.read_text().splitlines(), 1):
                    if pattern.search(line):
                        hits.append(f"{f.relative_to(REPO)}:{i}: {line.strip()[:80]}")
    assert not hits, "\n".join(hits)


def test_method_doc_has_every_cited_section():
    text = (REPO / "docs" / "method.md").read_text()
    headings = set(re.findall(r"^#{2,4}\s+([0-9]+(?:\.[0-9]+)*)[. ]", text, re.MULTILINE))
    cited = set()
    for root in (REPO / "sddr_jax", REPO / "docs", REPO / "configs", REPO / "datasets"):
        for f in root.rglob("*"):
            if f.suffix in (".py", ".md") and f.is_file() and f.name != "method.md":
                cited |= set(re.findall(r"§([0-9]+(?:\.[0-9]+)*)", f.read_text()))
    missing = sorted(c for c in cited if c not in headings)
    assert not missing, f"docs/method.md lacks the sections {missing} that the code cites"
