"""The layout of the packages: which way imports go, and no import cycle anywhere.

`api -> quanta_jobs <- worker`, `quanta_jobs -> quanta_spec`, `worker -> quanta`
(docs/architecture.md). Read from the source with `ast`, so that an import inside a
function counts as much as one at the top of a module: both run sooner or later.
"""

from __future__ import annotations

import pytest

from tests.support import REPO
from tests.support.imports import PACKAGES, import_graph, imports_of, top_level

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


def test_every_package_is_found() -> None:
    graph = import_graph()
    assert {top_level(m) for m in graph} == set(PACKAGES)
    assert "quanta_jobs.queue" in graph and "worker.runner" in graph


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import(package: str) -> None:
    bad = sorted(f"{module} imports {target}"
                 for module, targets in import_graph().items() if top_level(module) == package
                 for target in targets if top_level(target) in FORBIDDEN[package])
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
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail() -> None:
    """The cycle finder sees a circle, and an arrow the wrong way is caught."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    source = REPO / "quanta_jobs" / "queue.py"
    assert "celery" in {top_level(m) for m in imports_of("quanta_jobs.queue", source, set())}
