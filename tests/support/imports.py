"""The project's own import graph, read from its source with `ast`, so that an import
inside a function counts as much as one at the top of a module (both run sooner or later)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

#: The project's packages, each with one job (docs/architecture.md).
PACKAGES = ("quanta", "quanta_spec", "quanta_jobs", "quanta_client", "api", "worker")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "migrations" in path.parts:  # Alembic scripts, loaded by file path
                continue
            found[_module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports (absolute names), wherever the import statement is."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                candidate = f"{source}.{alias.name}"
                out.add(candidate if candidate in known else source)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def top_level(module: str) -> str:
    return module.split(".")[0]
