"""Every import is declared, in the part that needs it (pyproject.toml).

The library and its command lines (`quanta`, `quanta_spec`) need the core dependencies
(TensorFlow and Keras from `cpu` or `gpu`); the client (`quanta_client`) the core and
`client`; the job core, the API and the workers the core and `service`. Each package's
imports are read from its source with `ast` (wherever they are in a module), mapped to
the distributions installed here, and checked against those lists.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib

import pytest

from tests.support import REPO
from tests.support.imports import PACKAGES, import_graph, top_level

#: The extras each package's imports may come from, besides the core dependencies.
PARTS: dict[str, tuple[str, ...]] = {
    "quanta_spec": (),
    "quanta": ("cpu", "tensorboard", "mlflow"),
    "quanta_client": ("client",),
    "quanta_jobs": ("service",),
    "api": ("service",),
    "worker": ("service", "cpu"),
}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, set[str]]:
    """Distribution names of the core ("") and of each extra, extras that name this
    project's other extras expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    own = project["name"]
    out: dict[str, set[str]] = {}

    def expand(group: str) -> set[str]:
        if group not in out:
            names: set[str] = set()
            for requirement in groups[group]:
                if _name(requirement) == own:  # "quanta-service[service]"
                    for extra in re.findall(r"\[([^\]]+)\]", requirement)[0].split(","):
                        names |= expand(extra.strip())
                else:
                    names.add(_name(requirement))
            out[group] = names
        return out[group]

    for group in groups:
        expand(group)
    return out


def third_party(package: str) -> set[str]:
    """Top-level names of what `package` imports that is neither the standard library nor
    this project."""
    graph = import_graph()
    names = {top_level(target) for source, targets in graph.items() if top_level(source) == package
             for target in targets}
    return {n for n in names if n and n not in sys.stdlib_module_names
            and n not in PACKAGES and n != "__future__"}


@pytest.mark.parametrize("package", PARTS)
def test_each_part_declares_what_it_imports(package: str) -> None:
    groups = declared()
    allowed = groups[""].union(*(groups[extra] for extra in PARTS[package]))
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for name in third_party(package):
        dists = {d.lower().replace("_", "-") for d in providers.get(name, [name])}
        if not dists & allowed:
            missing[name] = sorted(dists)
    assert not missing, f"{package} imports what its part does not declare: {missing}"


def test_the_client_and_the_library_do_not_pull_the_service() -> None:
    """`pip install quanta-service[client]` gets no web server, database or queue."""
    groups = declared()
    for heavy in ("fastapi", "sqlalchemy", "celery", "psycopg", "boto3", "uvicorn"):
        assert heavy not in groups[""] | groups["client"], heavy
        assert heavy in groups["service"], heavy
