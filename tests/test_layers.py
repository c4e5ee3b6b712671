"""The package's layers: imports flow down only, no cycles (imports inside functions count)."""
from __future__ import annotations

import ast
from pathlib import Path

import edgeclip

ROOT = Path(edgeclip.__file__).parent

#: part -> parts it must never import (directly or inside a function)
FORBIDDEN = {
    "bundle": {"runtime", "devices", "export", "quant", "cli", "api", "stream", "serve", "batch", "sources", "watch"},
    "errors": {"bundle", "runtime", "devices", "export", "quant", "cli", "api", "watch"},
    "runtime": {"devices", "export", "quant", "cli", "api", "stream", "serve", "batch", "sources", "watch"},
    "devices": {"export", "quant", "cli", "api", "stream", "serve", "batch", "watch"},
    "export": {"devices", "cli", "api", "stream", "serve", "batch", "watch"},
    "quant": {"devices", "cli", "api", "stream", "serve", "batch", "watch"},
    "api": {"cli", "stream", "serve", "batch", "watch"},
    "watch": {"serve", "cli"},
}


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def import_graph() -> dict[str, set[str]]:
    """module -> edgeclip modules it imports anywhere in its source (a package importing its own
    submodules is an edge; a submodule importing its parent package is not)."""
    modules = {module_name(f)[0]: f for f in ROOT.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = module_name(path)[1]
        base = mod if package else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = base.split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    origin = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [origin] + [f"{origin}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] != "edgeclip":
                    continue
                r = resolve(t)
                if r and r != mod and not (mod.startswith(r + ".") and module_name(modules[r])[1]):
                    graph[mod].add(r)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = import_graph()
    assert "edgeclip.runtime.classifier" in graph["edgeclip.api"]  # the graph sees real edges
    assert find_cycles(graph) == []


def test_parts_import_only_the_layers_below_them() -> None:
    wrong = [f"{m} imports {t}" for m, targets in import_graph().items() for t in targets
             if part(t) in FORBIDDEN.get(part(m), set())]
    assert wrong == []


def test_runtime_never_mentions_torch() -> None:
    hits = [str(f) for f in (ROOT / "runtime").rglob("*.py")
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
            if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch")]
    assert hits == []
