"""The package's layers: imports flow down only, no cycles (imports inside functions count), and the CLI
uses the public API (docs/architecture.md draws the layers)."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import edgeclip

ROOT = Path(edgeclip.__file__).parent

#: the layers, lowest first: a module may import modules of its own part or of a lower layer, nothing else
#: (a part is a top-level module or package; "" is the package itself, whose lazy public names reach down)
LAYERS: list[set[str]] = [
    {"_version", "errors"},
    {"tables", "extras"},
    {"options"},
    {"bundle"},
    {"runtime"},
    {"sources"},
    {"devices", "export"},
    {"quant"},
    {"api"},
    {"stream", "batch", "evaluate", "bench"},
    {"watch"},
    {"serve"},
    {""},
    {"cli"},
    {"__main__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}
#: what the CLI may use: the public API, its applications and the plain definitions below them
CLI_MAY_IMPORT = {"", "api", "stream", "batch", "evaluate", "bench", "serve", "watch", "errors", "extras", "options",
                  "tables", "_version"}


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> edgeclip modules it imports anywhere in its source (imports inside functions and
    ``TYPE_CHECKING`` blocks too; a package importing its submodules and a module importing its parent
    package are edges like any other)."""
    modules = {module_name(f, root)[0]: f for f in root.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = module_name(path, root)[1]
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
                # ``from . import store`` depends on the module store; ``from .. import load`` on the package
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            for t in targets:
                if t.split(".")[0] != "edgeclip":
                    continue
                r = resolve(t)
                if r and r != mod:
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


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up or sideways between layers, or from the CLI past the public API."""
    out = []
    for mod, targets in graph.items():
        a = part(mod)
        for t in targets:
            b = part(t)
            if a == b:
                continue
            if a not in RANK or b not in RANK:
                out.append(f"{mod} imports {t}: add {a if a not in RANK else b!r} to LAYERS")
            elif RANK[b] >= RANK[a]:
                out.append(f"{mod} imports {t} ({b or 'the package'} is not below {a or 'the package'})")
            elif a == "cli" and b not in CLI_MAY_IMPORT:
                out.append(f"{mod} imports {t}: the CLI uses the public API, not {b}")
    return sorted(out)


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = import_graph()
    assert "edgeclip.runtime.classifier" in graph["edgeclip.api"]  # the graph sees real edges
    assert find_cycles(graph) == []


def test_every_part_has_a_layer() -> None:
    parts = {part(m) for m in import_graph()}
    assert parts - set(RANK) == set()
    assert {"", "cli", "api", "runtime", "stream", "serve", "batch", "sources", "extras", "tables"} <= parts


def test_parts_import_only_the_layers_below_them() -> None:
    assert violations(import_graph()) == []


@pytest.mark.parametrize("module, line, expected", [
    ("runtime/cpu.py", "from .. import load", "edgeclip.runtime.cpu imports edgeclip (the package is not below runtime)"),
    ("runtime/cpu.py", "def f():\n    from ..stream import Stream\n",
     "edgeclip.runtime.cpu imports edgeclip.stream (stream is not below runtime)"),
    ("devices/catalog.py", "from ..export import options", "edgeclip.devices.catalog imports edgeclip.export.options "
                                                            "(export is not below devices)"),
    ("cli/devices.py", "from ..devices.detect import detect",
     "edgeclip.cli.devices imports edgeclip.devices.detect: the CLI uses the public API, not devices"),
])
def test_a_planted_upward_import_fails_the_layer_test(tmp_path: Path, module: str, line: str, expected: str) -> None:
    copy = tmp_path / "edgeclip"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static", "assets"))
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")
    assert violations(import_graph(copy)) == [expected]


def test_runtime_never_mentions_torch() -> None:
    hits = [str(f) for f in (ROOT / "runtime").rglob("*.py")
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
            if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch")]
    assert hits == []
