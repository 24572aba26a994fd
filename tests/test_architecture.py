"""The layout of the packages: which way imports go, and no import cycle anywhere.

`api -> quanta_jobs <- worker`, `quanta_jobs -> quanta_spec`, `worker -> quanta`
(docs/architecture.md). Read from the source with `ast`, so that an import inside a
function counts as much as one at the top of a module: both run sooner or later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("quanta", "quanta_spec", "quanta_jobs", "quanta_client", "api", "worker")
TENSORFLOW = ("tensorflow", "keras")
#: For each package, the top-level names it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "quanta_spec": ("quanta", "quanta_jobs", "quanta_client", "api", "worker", "fastapi",
                    "starlette", "sqlalchemy", "celery", *TENSORFLOW),
    "quanta_jobs": ("quanta", "quanta_client", "api", "worker", "fastapi", "starlette",
                    *TENSORFLOW),
    "api": ("quanta", "worker", *TENSORFLOW),
    "worker": ("api", "fastapi", "starlette"),
    "quanta_client": ("quanta", "quanta_jobs", "api", "worker", *TENSORFLOW),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:  # Alembic scripts, loaded by file path
                continue
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
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


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_package_is_found() -> None:
    graph = _graph()
    assert {_top(m) for m in graph} == set(PACKAGES)
    assert "quanta_jobs.queue" in graph and "worker.runner" in graph


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import(package: str) -> None:
    bad = sorted(f"{module} imports {target}"
                 for module, targets in _graph().items() if _top(module) == package
                 for target in targets if _top(target) in FORBIDDEN[package])
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail() -> None:
    """The cycle finder sees a circle, and an arrow the wrong way is caught."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    source = ROOT / "quanta_jobs" / "queue.py"
    assert "celery" in {_top(m) for m in _imports("quanta_jobs.queue", source, set())}
