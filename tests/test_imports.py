"""The package's modules import one another without cycles (data flows one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import melsml

PACKAGE = Path(melsml.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if hasattr(sub, "lineno"):
                    lines.add(sub.lineno)
    return lines


def import_graph() -> dict[str, set[str]]:
    """Edges module -> melsml modules it imports anywhere (functions included),
    leaving out imports only for type checking."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("melsml"):
                    for alias in node.names:
                        full = f"{mod}.{alias.name}"
                        deps.add(full if _exists(full) else mod)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("melsml")}
        graph[name] = {d for d in deps if d != name and _exists(d)}
    return graph


def _exists(mod: str) -> bool:
    rel = Path(*mod.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the modules (ignoring imports of a package's own __init__
    from its submodules, which Python resolves), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + "."):
                continue  # a submodule importing its parent package
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "melsml.likelihood" in graph and graph["melsml.model"]
    cycle = find_cycle({k: v for k, v in graph.items() if k != "melsml"})
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_does_not_import_the_test_twin():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "engine_ref" not in text and "_quad_ref" not in text, path
