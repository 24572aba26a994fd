"""The deployment files: docker-compose.yml, Dockerfile.gpu, .env.example (Docker can't run
here, so they are checked as data), and `quanta-serve` started for real."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO, free_port, service_env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_compose_services_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    for name in ("api", "worker", "redis", "postgres"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "quanta-worker" in compose["services"]["worker"]["command"]
    assert "--gpu" in compose["services"]["worker"]["command"]
    # Several workers may share the GPU, each with a memory cap (read by quanta-worker).
    assert compose["services"]["worker"]["deploy"]["replicas"] == "${QUANTA_WORKERS_PER_GPU:-1}"
    assert {"QUANTA_WORKERS_PER_GPU", "QUANTA_GPU_MEMORY_MB"} <= set(env_example())


def test_compose_shares_volumes_and_env_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        assert ".env" in services[name]["env_file"], name
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/var/lib/quanta/artifacts", "/var/lib/quanta/uploads",
                "/var/lib/quanta/datasets"} <= mounts
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert {"pgdata", "redisdata", "artifacts", "uploads", "datasets"} <= set(compose["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_env_example_configures_the_service() -> None:
    from quanta_jobs.settings import Settings

    values = env_example()
    assert "QUANTA_API_TOKENS" in values
    assert values["QUANTA_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert values["QUANTA_BROKER_URL"].startswith("redis://redis:")
    compose_only = {"QUANTA_API_PORT", "QUANTA_GPU_ID", "QUANTA_WORKERS_PER_GPU",
                    "QUANTA_GPU_MEMORY_MB"}
    fields = {f"QUANTA_{name.upper()}" for name in Settings.model_fields}
    for key in values:
        if key.startswith("QUANTA_") and key not in compose_only:
            assert key in fields, f"{key} is not a setting"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_dockerfile_builds_on_tensorflow_gpu() -> None:
    text = (REPO / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM tensorflow/tensorflow:2\.21\.0-gpu\s*$", text, re.M)
    install = re.search(r"pip install (\S+)", text)
    assert install is not None and install.group(1) == "."  # no [cpu]/[gpu] extra


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of Dockerfile.gpu, continuation lines joined."""
    joined, pending = [], ""
    for line in (REPO / "Dockerfile.gpu").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        joined.append(pending.strip())
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_every_package_is_copied_into_the_image() -> None:
    """`pip install .` finds only the packages that were COPYed: one missing (as
    quanta_jobs once was) builds an image whose API and worker cannot start."""
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")
                if any(fnmatch.fnmatch(p.parent.name, pattern) for pattern in patterns)}
    assert {"quanta", "quanta_spec", "quanta_jobs", "quanta_client", "api", "worker"} <= packages
    copied = {shlex.split(args)[0] for instruction, args in dockerfile_instructions()
              if instruction == "COPY"}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_every_mounted_folder_is_created_and_owned_by_the_image_user(
        compose: dict[str, Any]) -> None:
    """Docker creates a mount point the image lacks as root, and a fresh named volume
    takes the owner of the image's folder: each folder compose mounts (and each
    QUANTA_*_DIR the image points the service at) must be made in the image and
    chowned to the USER the containers run as, or every job fails writing there."""
    instructions = dockerfile_instructions()
    env = image_env()
    users = [args.strip() for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the containers must not run as root"
    user = users[-1]
    created: set[PurePosixPath] = set()
    owned: set[PurePosixPath] = set()  # chown -R roots, each after the folders it covers
    for instruction, args in instructions:
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = [_expand(w, env) for w in shlex.split(command)]
            if words[:1] == ["mkdir"]:
                created |= {PurePosixPath(w) for w in words[1:] if not w.startswith("-")}
            elif words[:1] == ["chown"] and "-R" in words:
                owner = next(w for w in words[1:] if not w.startswith("-"))
                if owner.split(":")[0] == user:
                    roots = [PurePosixPath(w) for w in words[words.index(owner) + 1:]]
                    owned |= {c for c in created if any(c.is_relative_to(r) for r in roots)}
    assert any(re.search(rf"useradd\b[^&]*\b{user}\b", args) for instruction, args in
               instructions if instruction == "RUN"), f"no useradd of {user}"

    mounted: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        if service.get("image") != compose["services"]["api"]["image"]:
            continue
        for volume in service.get("volumes", []):
            mounted.setdefault(volume.split(":")[1], set()).add(name)
    assert {"api", "worker"} <= set().union(*mounted.values())
    folders = set(mounted) | {value for key, value in env.items()
                              if key.startswith("QUANTA_") and key.endswith("_DIR")}
    assert "/var/lib/quanta/checkpoints" in folders
    for folder in sorted(folders):
        path = PurePosixPath(folder)
        assert path in created, f"{folder} is not created in the image (Docker makes it root's)"
        assert path in owned, f"{folder} is not chowned to {user} after it is created"
    for key in ("QUANTA_ARTIFACTS_DIR", "QUANTA_UPLOADS_DIR", "QUANTA_DATA_DIR",
                "QUANTA_CHECKPOINTS_DIR"):  # the service writes where the volumes are
        assert env.get(key) in mounted, f"{key}={env.get(key)} is not a mounted volume"


def _expand(word: str, env: dict[str, str]) -> str:
    """$NAME and ${NAME} from the image's ENV, as the shell of a RUN would."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), word)


def test_migrations_are_packaged() -> None:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = data["project"]["scripts"]
    assert scripts["quanta-serve"] == "api.serve:main"
    assert scripts["quanta-worker"] == "worker.main:main"
    patterns = data["tool"]["setuptools"]["package-data"]["quanta_jobs"]
    migrations = REPO / "quanta_jobs"
    packaged = {p.relative_to(migrations).as_posix() for pattern in patterns
                for p in migrations.glob(pattern)}
    assert "migrations/env.py" in packaged and "migrations/script.py.mako" in packaged
    assert any(p.startswith("migrations/versions/") for p in packaged)


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "quanta-serve exited"
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout}s")


@pytest.mark.parametrize("workers", [0, 1])
def test_quanta_serve_starts_and_stops_cleanly(tmp_path: Path, workers: int) -> None:
    """Real uvicorn over HTTP (and a real worker); SIGTERM stops everything in time."""
    port = free_port()
    env = service_env(database_url=f"sqlite:///{tmp_path / 'q.db'}",
                      broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                      artifacts_dir=tmp_path / "artifacts")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "api.serve", "--port", str(port), "--workers", str(workers),
         "--stop-timeout", "20"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/healthz", process).json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").status_code == 200
        if workers:
            response = httpx.post(f"{base}/v1/jobs", json={"kind": "source", "spec": {
                "source_task": "digits", "show_only_build": True, "width_multiplier": 0.0625}})
            assert response.status_code == 201
            job_url = f"{base}{response.json()['links']['self']}"
            deadline = time.monotonic() + 90
            while httpx.get(job_url).json()["status"] != "succeeded":
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.3)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        assert time.monotonic() - began < 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in text, text
    if workers:
        assert "started worker0" in text
        # the worker subprocess is gone too
        assert subprocess.run(["pgrep", "-g", str(process.pid)],
                              capture_output=True).returncode != 0
