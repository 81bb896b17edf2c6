"""The codebase stays the shape the README's Layout section describes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_CLASS_LINES = 250
MAX_MODULE_LINES = 500


def _layout() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_every_module_of_the_package_is_in_the_readme_layout() -> None:
    layout = _layout()
    missing = [
        p.name
        for p in sorted((ROOT / "pipeline").glob("*.py"))
        if not p.name.startswith("__") and f"  {p.name} " not in layout
    ]
    assert missing == []


def test_no_class_or_module_outgrows_the_limits_the_readme_states() -> None:
    too_big = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
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
