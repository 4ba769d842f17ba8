"""The package's import graph: no circles, and the layering the code map promises.

The graph is read from the source with ``ast`` (module-level and function-level imports alike, since
a deferred import still ties the two modules together), so the test needs no heavy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hoigen"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules (None for third-party names)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the hoigen modules it imports anywhere in its body (``from P import m`` counts m if m is a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    edges.add(resolved)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _edges_into(graph: dict[str, set[str]], sources: str, targets: str) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a, bs in graph.items()
        if a == sources or a.startswith(sources + ".")
        for b in bs
        if b == targets or b.startswith(targets + ".")
    )


GRAPH = import_graph()


def test_graph_reader_sees_function_level_imports() -> None:
    """The reader itself: a deferred import inside a function is an edge (so the tests below can fail)."""
    assert "hoigen.render.renderer" in GRAPH["hoigen.render.stage"]  # imported inside a function there
    assert "hoigen.errors" in GRAPH["hoigen.render.renderer"]
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert reachable(toy, "d") == {"a", "b", "c"}


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_diffusion_does_not_import_render() -> None:
    assert _edges_into(GRAPH, "hoigen.diffusion", "hoigen.render") == []


def test_ingest_does_not_import_render() -> None:
    """Real-data ingest shares the map encodings through the contract, not the GL renderer."""
    assert _edges_into(GRAPH, "hoigen.ingest", "hoigen.render") == []


def test_data_layer_imports_no_stage() -> None:
    """``hoigen.data`` (shards, runner, contract, validate) sits below every stage and the CLI."""
    above = ("hoigen.cli", "hoigen.api", "hoigen.recipe", "hoigen.grasp", "hoigen.render", "hoigen.diffusion",
             "hoigen.export", "hoigen.ingest")
    bad = [f"{a} -> {b}" for a, bs in GRAPH.items() if a.startswith("hoigen.data") for b in bs
           if any(b == p or b.startswith(p + ".") for p in above)]
    assert bad == []


def test_export_does_not_import_render() -> None:
    assert _edges_into(GRAPH, "hoigen.export", "hoigen.render") == []


def _options_modules() -> list[str]:
    return sorted(m for m in GRAPH if m in ("hoigen.options", "hoigen.recipe") or m.endswith(".options"))


STAGE_INTERNALS = ("hoigen.grasp", "hoigen.render", "hoigen.diffusion", "hoigen.export", "hoigen.ingest",
                   "hoigen.hand", "hoigen.objects", "hoigen.pose")


def _options_import_internals() -> list[str]:
    """Imports from an options module (or the recipe reader) into stage code other than options; a stage's
    options module may use its own package's small parsers (e.g. the condition-scale syntax)."""
    bad = []
    for module in _options_modules():
        own = module.rpartition(".")[0] + "."
        for b in GRAPH[module]:
            if (any(b == p or b.startswith(p + ".") for p in STAGE_INTERNALS) and not b.endswith(".options")
                    and not (module.endswith(".options") and own != "hoigen." and b.startswith(own))):
                bad.append(f"{module} -> {b}")
    return sorted(bad)


def test_options_import_no_stage_internals() -> None:
    """Options are declared below the stages: reading a recipe or building options loads no stage code."""
    assert "hoigen.recipe" in _options_modules() and "hoigen.render.options" in _options_modules()
    assert _options_import_internals() == []


def test_benchmarks_live_outside_the_package() -> None:
    """``make bench`` / ``make soak`` code is in benchmarks/, imported by nothing in hoigen/."""
    import importlib

    root = PACKAGE.parent
    assert not [p for p in PACKAGE.rglob("*.py") if p.stem in ("bench", "soak", "benchmark")]
    users = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            users += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "benchmarks"]
    assert users == []
    for name in ("bench", "soak", "grasp", "diffusion"):
        assert (root / "benchmarks" / f"{name}.py").exists()
    assert callable(importlib.import_module("benchmarks.soak").main)
