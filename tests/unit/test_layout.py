"""The codebase keeps the shape docs/architecture.md describes: its wings, what
each may import, the runtime free of developer tooling, no import cycles, and
modules and classes within the sizes the page states."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
MAX_CLASS_LINES = 250
MAX_MODULE_LINES = 500

#: The modules of `pipeline/` itself every wing shares: errors, settings, the
#: registry, the records and their Avro, the durable state, the process's loop.
VOCABULARY = {
    "avrowriter",
    "config",
    "errors",
    "eventloop",
    "factory",
    "failpoints",
    "partners",
    "records",
    "schemas",
    "state",
    "messages",
}
#: What each wing may import besides the vocabulary and itself.
MAY_IMPORT = {
    "limits": set(),
    "security": set(),
    "upstream": {"limits", "security"},
    "kafka": {"security"},
    "lifecycle": {"limits", "upstream", "security", "ops.metrics"},
    "ops": {"limits", "security", "kafka"},
    "vocabulary": {"limits", "security"},
}
#: Where nothing may import developer tooling: everything but dev itself and
#: the command line (which imports it inside the commands that need it).
EDGES = {"dev", "cli", "__main__"}


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, *, top_level_only: bool) -> Iterator[str]:
    """Modules of the package a tree imports; `top_level_only`: not inside a
    function (those run when called, so they cannot make an import cycle)."""
    nodes: list[ast.AST] = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("pipeline"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("pipeline")
        ):
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        nodes.extend(ast.iter_child_nodes(node))


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """`pipeline.x.y.Name` -> the module it names (`pipeline.x.y`)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets = {_resolve(t, modules) for t in _imports(tree, top_level_only=top_level_only)}
        graph[name] = {t for t in targets if t and t != name and t != "pipeline"}
    return graph


def _wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "pipeline"
    if parts[1] in VOCABULARY:
        return "vocabulary"
    return parts[1]


def _layout() -> str:
    page = (ROOT / "docs" / "architecture.md").read_text()
    return page.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def test_every_module_of_the_package_is_in_the_architecture_layout() -> None:
    layout = _layout()
    missing = [
        str(p.relative_to(PACKAGE))
        for p in _modules().values()
        if not p.name.startswith("__") and f" {p.relative_to(PACKAGE)} " not in layout
    ]
    assert missing == []


def test_no_class_or_module_outgrows_the_limits_the_page_states() -> None:
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(ROOT)
        if source.count("\n") > MAX_MODULE_LINES:
            too_big.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_big.append(f"{name}: class {node.name}, {lines} lines")
    assert too_big == []


def test_the_runtime_imports_nothing_of_the_developer_tooling() -> None:
    offending = [
        f"{module} imports {target}"
        for module, targets in _graph(top_level_only=False).items()
        if [*module.split("."), ""][1] not in EDGES
        for target in sorted(targets)
        if target.startswith("pipeline.dev")
    ]
    assert offending == []


def test_a_worker_process_loads_no_developer_tooling() -> None:
    """What actually runs: the worker's command line, its modules and the
    partner library load no module of pipeline.dev."""
    code = (
        "import sys, pipeline.cli, pipeline.worker, pipeline.client;"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.dev')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_each_wing_imports_only_what_its_docstring_allows() -> None:
    offending = []
    for module, targets in _graph(top_level_only=False).items():
        wing = _wing(module)
        if wing not in MAY_IMPORT:
            continue
        allowed = MAY_IMPORT[wing] | {"vocabulary", wing}
        for target in sorted(targets):
            there = _wing(target)
            if there not in allowed and not any(
                target == f"pipeline.{a}" or target.startswith(f"pipeline.{a}.") for a in allowed
            ):
                offending.append(f"{module} ({wing}) imports {target} ({there})")
    assert offending == []


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over imports a module makes when
    it loads (including those only type checkers follow)."""
    graph = _graph(top_level_only=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

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
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_wings_say_what_they_hold() -> None:
    undocumented = [
        str(p.relative_to(ROOT))
        for p in sorted(PACKAGE.glob("*/__init__.py"))
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert undocumented == []
