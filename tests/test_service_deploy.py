"""The deployment files: docker-compose.yml, Dockerfile.gpu, .env.example (Docker can't run
here, so they are checked as data), and `quanta-serve` started for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
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
    for folder in ("quanta", "quanta_spec", "api", "worker"):
        assert f"COPY {folder} " in text


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
