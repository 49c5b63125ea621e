"""The package's boundaries (docs/architecture.md): no import cycle, no module importing another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_lesson"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every package import in the file, at any depth: (module, names imported from it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_lesson"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("mnist_lesson")]
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
            graph[name] |= {t for t in targets if t in MODULES and t != name}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph, cycles = _graph(), []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, f"import cycles: {sorted({' -> '.join(c) for c in cycles})[:5]}"


def test_no_module_imports_another_modules_private_names() -> None:
    private = [(name, module, n) for name, path in MODULES.items() for module, names in _imports(path)
               for n in names if n.startswith("_") and module != name]
    assert not private


def test_the_module_map_names_every_module() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for name, path in MODULES.items():
        if path.stem not in {"__init__", "__main__"}:
            assert f"`{path.name}`" in page, f"docs/architecture.md does not describe {name}"
