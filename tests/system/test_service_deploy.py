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

from tests.support import REPO
from tests.support.jobs import wait_job
from tests.support.live_service import LiveService
from tests.support.net import free_port
from tests.support.processes import service_env
from tests.support.waiting import wait_until


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


#: What the API and the workers read to reach the artifact store (docs/service.md).
STORE_ENV = ("QUANTA_STORE_URL", "QUANTA_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def interpolate(text: str, shell: dict[str, str]) -> str:
    """Compose's interpolation of `text`: `$$` is a `$`; `${NAME}`, `${NAME:-default}`,
    `${NAME-default}` and `$NAME` take `shell` (a `${NAME:?message}` unset fails)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("bare"):
            return shell.get(match.group("bare"), "")
        name, op, default = match.group("name", "op", "default")
        value = shell.get(name)
        if op == ":?" and not value:
            raise AssertionError(f"compose refuses: {name} is required ({default})")
        if (op == ":-" and not value) or (op == "-" and value is None):
            return default
        return value or ""

    return re.sub(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:-|-|:\?)(?P<default>[^}]*))?\}"
                  r"|\$(?P<bare>[A-Za-z_]\w*)", one, text)


def container_env(environment: dict[str, str | None], shell: dict[str, str]) -> dict[str, str]:
    """The variables an `environment:` mapping gives a container when `shell` is the
    environment compose runs in (.env aside): a name without a value is passed only if
    the shell has it, anything else is interpolated."""
    env = {}
    for name, value in environment.items():
        if value is None:
            if name in shell:
                env[name] = shell[name]
        else:
            env[name] = interpolate(str(value), shell)
    return env


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
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert devices[0]["device_ids"] == ["0"]
    assert worker["command"][:3] == ["quanta-worker", "--gpu", "0"]
    # No replicas: each worker has a name of its own (deploy/compose_gpus.py adds more).
    assert "replicas" not in worker["deploy"]
    # Several workers may share a GPU, each with a memory cap (read by quanta-worker).
    assert {"QUANTA_WORKERS_PER_GPU", "QUANTA_GPU_MEMORY_MB"} <= set(env_example())


def test_the_worker_and_its_healthcheck_read_one_name(compose: dict[str, Any]) -> None:
    """The healthcheck is the worker's own heartbeat (`quanta-worker --check`), which holds
    while the solo pool trains, and names the worker from the variable the worker reads:
    a name per GPU slot, not per container, and none given on the command line."""
    worker = compose["services"]["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "quanta-worker", "--check"]
    assert "--name" not in worker["command"]
    env = container_env(worker["environment"], {"POSTGRES_PASSWORD": "pw"})
    assert env["QUANTA_WORKER_NAME"] == "gpu0@quanta"
    assert container_env(worker["environment"], {"POSTGRES_PASSWORD": "pw",
                                                 "QUANTA_HOST_NAME": "lab7"}
                         )["QUANTA_WORKER_NAME"] == "gpu0@lab7"
    interval = int(worker["healthcheck"]["interval"].rstrip("s"))
    assert interval >= 2 * 15  # two default heartbeats: a busy worker is never late
    assert worker["stop_grace_period"] == "2m"  # > QUANTA_SHUTDOWN_WAIT_S's 45 s default


def test_compose_gpus_writes_one_worker_per_gpu_slot(compose: dict[str, Any]) -> None:
    """deploy/compose_gpus.py: copies of the base worker, each with its own GPU and name."""
    script = str(REPO / "deploy" / "compose_gpus.py")
    done = subprocess.run([sys.executable, script, "--gpus", "4", "--per-gpu", "2"],
                          capture_output=True, text=True, check=True)
    services = yaml.safe_load(done.stdout)["services"]
    expected = {f"worker-gpu{g}" for g in range(1, 4)} | {f"worker-gpu{g}-2" for g in range(4)}
    assert set(services) == expected
    base = compose["services"]["worker"]
    seen = {"gpu0@quanta": "0"}
    for name, service in services.items():
        gpu = name.removeprefix("worker-gpu").split("-")[0]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert [d["device_ids"] for d in devices] == [[gpu]], name
        env = container_env(service["environment"], {"POSTGRES_PASSWORD": "pw"})
        seen[env["QUANTA_WORKER_NAME"]] = gpu
        # everything else is the base worker's, healthcheck and volumes included
        rest = {k: v for k, v in service.items() if k not in ("environment", "deploy")}
        assert rest == {k: v for k, v in base.items() if k not in ("environment", "deploy")}
        assert {k: v for k, v in service["environment"].items()
                if k != "QUANTA_WORKER_NAME"} == {
            k: v for k, v in base["environment"].items() if k != "QUANTA_WORKER_NAME"}
    assert len(seen) == 8  # distinct names, stable per slot
    assert seen["gpu3-2@quanta"] == "3"
    one = subprocess.run([sys.executable, script, "--gpus", "1"], capture_output=True,
                         text=True, check=True)
    assert yaml.safe_load(one.stdout) == {"services": {}}
    bad = subprocess.run([sys.executable, script, "--gpus", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--gpus" in bad.stderr


def test_each_container_gets_only_what_it_needs(compose: dict[str, Any]) -> None:
    """No container gets .env whole: the API tokens reach the API alone, and the database
    password is set once (POSTGRES_PASSWORD) for PostgreSQL, the API and the workers."""
    services = compose["services"]
    shell = {"POSTGRES_PASSWORD": "s3cret-pw", "QUANTA_API_TOKENS": "ops:" + "x" * 32,
             "QUANTA_MAX_JOB_SECONDS": "7"}
    for name, service in services.items():
        assert "env_file" not in service, name
    envs = {name: container_env(services[name].get("environment") or {}, shell)
            for name in ("postgres", "api", "worker")}
    assert "QUANTA_API_TOKENS" in envs["api"]
    assert "QUANTA_API_TOKENS" not in envs["worker"]
    assert "QUANTA_API_TOKENS" not in envs["postgres"]
    url = "postgresql+psycopg://quanta:s3cret-pw@postgres:5432/quanta"
    assert envs["api"]["QUANTA_DATABASE_URL"] == envs["worker"]["QUANTA_DATABASE_URL"] == url
    assert envs["postgres"]["POSTGRES_PASSWORD"] == "s3cret-pw"
    assert not any(k.startswith("QUANTA_") for k in envs["postgres"])
    # any setting set in .env reaches both, and only those set are passed
    assert envs["api"]["QUANTA_MAX_JOB_SECONDS"] == envs["worker"]["QUANTA_MAX_JOB_SECONDS"]
    assert "QUANTA_TRACED_MODELS" not in envs["worker"]
    text = (REPO / "docker-compose.yml").read_text()
    assert text.count("${POSTGRES_PASSWORD") == 2  # postgres's own, and the URL's
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        container_env(services["worker"]["environment"], {})


def test_every_setting_reaches_the_api_and_the_workers(compose: dict[str, Any]) -> None:
    from quanta_jobs.settings import Settings

    fixed = {"QUANTA_ARTIFACTS_DIR", "QUANTA_UPLOADS_DIR", "QUANTA_DATA_DIR",
             "QUANTA_CHECKPOINTS_DIR", "QUANTA_STORE_CACHE_DIR"}  # the image's, the volumes
    for service, own in (("api", {"QUANTA_API_TOKENS", "QUANTA_WORKER_NAME"}),
                         ("worker", {"QUANTA_API_TOKENS"})):
        environment = set(compose["services"][service]["environment"])
        missing = ({f"QUANTA_{name.upper()}" for name in Settings.model_fields}
                   - fixed - own - environment)
        assert not missing, f"{service} never gets {sorted(missing)}"
    assert "QUANTA_WORKER_NAME" not in compose["services"]["api"]["environment"]


def test_the_api_is_published_on_this_host_only(compose: dict[str, Any]) -> None:
    ports = compose["services"]["api"]["ports"]
    assert ports == ["127.0.0.1:${QUANTA_API_PORT:-8000}:8000"]
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_compose_v2_is_required_and_said_so(compose: dict[str, Any]) -> None:
    """`name:` is Compose v2's (1.x refuses it): the file and the docs say v2 is needed."""
    assert compose["name"] == "quanta"
    assert "Compose v2" in (REPO / "docker-compose.yml").read_text().split("\nname:")[0]
    assert "Compose v2" in (REPO / "docs" / "service.md").read_text()


def test_dockerignore_keeps_secrets_and_history_out_of_the_image() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".env", ".git", ".venv", "**/__pycache__", ".pytest_cache", "var"):
        assert needed in patterns, needed
    copied = {shlex.split(args)[0] for instruction, args in dockerfile_instructions()
              if instruction == "COPY"}
    assert not copied & set(patterns)  # what the Dockerfile copies stays in


def test_the_keras_floor_is_in_every_install() -> None:
    import tomllib

    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"keras>=3\.15\.1(,<4)?", d) for d in core), core


@pytest.mark.postgres
def test_a_database_not_in_utf8_is_refused_at_start(postgres_url: str, tmp_path: Path) -> None:
    """An SQL_ASCII database made the API crash-loop on a TypeError: quanta-serve now
    stops at once, with one line saying why and what to do."""
    from sqlalchemy import text

    from quanta_jobs.db import make_engine

    server = postgres_url.split("?")[0]
    name = f"quanta_ascii_{os.getpid()}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' "
                              "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"))
        url = server.rsplit("/", 1)[0] + "/" + name
        env = service_env(database_url=url, artifacts_dir=tmp_path / "artifacts")
        for command in (["--workers", "0", "--port", str(free_port())], ["migrate"]):
            done = subprocess.run([sys.executable, "-m", "api.serve", *command], env=env,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, done.stderr
            assert "Traceback" not in done.stderr
            line = [x for x in done.stderr.splitlines() if x.startswith("quanta-serve:")]
            assert len(line) == 1 and "SQL_ASCII" in line[0] and "UTF8" in line[0], done.stderr
        done = subprocess.run([sys.executable, "-m", "quanta_jobs.migrate"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "SQL_ASCII" in done.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_compose_shares_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/var/lib/quanta/artifacts", "/var/lib/quanta/uploads",
                "/var/lib/quanta/datasets", "/var/lib/quanta/checkpoints",
                "/var/lib/quanta/cache"} <= mounts
    assert services["api"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert {"pgdata", "redisdata", "artifacts", "uploads", "datasets", "checkpoints",
            "cache"} <= set(compose["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_compose_s3_profile_runs_minio_and_makes_the_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "api", "worker"):  # a plain `docker compose up`
        assert not services[name].get("profiles"), name
    assert services["flower"]["profiles"] == ["monitoring"]
    minio, init = services["minio"], services["minio-init"]
    assert minio["profiles"] == ["s3"] and init["profiles"] == ["s3"]
    for service in (minio, init):
        image, _, tag = service["image"].rpartition(":")
        assert "minio" in image and tag.startswith("RELEASE."), service["image"]  # pinned
    data = [v for v in minio["volumes"] if v.split(":")[1] == "/data"]
    assert data and data[0].split(":")[0] in compose["volumes"]
    assert "/data" in minio["command"]
    assert minio["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert all(str(port).startswith("127.0.0.1:") for port in minio["ports"])
    # MinIO's root key is the key the API and the workers are given.
    shell = {"AWS_ACCESS_KEY_ID": "quanta", "AWS_SECRET_ACCESS_KEY": "secret-key"}
    assert container_env(minio["environment"], shell) == {
        "MINIO_ROOT_USER": "quanta", "MINIO_ROOT_PASSWORD": "secret-key"}
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    assert init["entrypoint"] == ["/bin/sh", "-c"] and len(init["command"]) == 1


def run_minio_init(compose: dict[str, Any], shell: dict[str, str],
                   tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """minio-init's script under /bin/sh, with an `mc` that records its arguments."""
    init = compose["services"]["minio-init"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "mc-calls"
    calls.unlink(missing_ok=True)
    (bin_dir / "mc").write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n')
    (bin_dir / "mc").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
           **container_env(init["environment"], shell)}
    script = interpolate(init["command"][0], shell)
    done = subprocess.run([*init["entrypoint"], script], env=env, capture_output=True,
                          text=True, timeout=30)
    return done, (calls.read_text().splitlines() if calls.exists() else [])


def test_minio_init_makes_the_bucket_the_store_url_names(
        compose: dict[str, Any], tmp_path: Path) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "quanta", "AWS_SECRET_ACCESS_KEY": "secret-key"}
    done, calls = run_minio_init(
        compose, {"QUANTA_STORE_URL": "s3://papers/runs/2025", **keys}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls == ["alias set store http://minio:9000 quanta secret-key",
                     "mb --ignore-existing store/papers"]
    for url in ("", "papers", "papers/runs", "s3://", "s3:///runs"):
        done, calls = run_minio_init(compose, {"QUANTA_STORE_URL": url, **keys}, tmp_path)
        assert done.returncode != 0 and "QUANTA_STORE_URL" in done.stderr, url
        assert calls == [], url
    done, calls = run_minio_init(compose, {"QUANTA_STORE_URL": "s3://papers/"}, tmp_path)
    assert done.returncode != 0 and "AWS_ACCESS_KEY_ID" in done.stderr and calls == []


def settings_from(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`Settings` read from `env` alone, as in a container (no AWS file of this machine)."""
    from quanta_jobs.settings import Settings

    for key in list(os.environ):
        if key.startswith(("QUANTA_", "AWS_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    # Nor an EC2 instance: boto3 would ask the metadata service and wait for its time-outs.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("QUANTA_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("service", ["api", "worker"])
def test_compose_passes_the_store_settings(compose: dict[str, Any], service: str,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The store variables reach the API and the workers from the shell (or .env), and
    what compose passes when they are not set keeps the local folders, or, with only
    QUANTA_STORE_URL set, an S3 client on AWS: an empty endpoint or region would not do."""
    from quanta_jobs.store import LocalStore, S3Store, store_from_settings

    environment = compose["services"][service]["environment"]
    assert set(STORE_ENV) <= set(environment)
    if service == "api":
        assert "QUANTA_API_TOKENS" in environment

    env = container_env(environment, {"QUANTA_API_TOKENS": "ops:" + "x" * 32,
                                      "POSTGRES_PASSWORD": "pw"})
    assert env.get("QUANTA_STORE_URL", "") == ""
    settings = settings_from(env, tmp_path, monkeypatch)
    assert settings.store_url is None
    assert isinstance(store_from_settings(settings, "artifacts"), LocalStore)

    aws = {"QUANTA_STORE_URL": "s3://quanta/runs", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "QUANTA_API_TOKENS": "ops:" + "x" * 32,
           "POSTGRES_PASSWORD": "pw"}
    env = container_env(environment, aws)
    assert {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} == {
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    store = store_from_settings(settings_from(env, tmp_path, monkeypatch), "uploads")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == ("quanta", "runs/uploads", None)

    minio = {**aws, "QUANTA_STORE_URL": "s3://quanta/",
             "QUANTA_S3_ENDPOINT_URL": "http://minio:9000"}
    env = container_env(environment, minio)
    store = store_from_settings(settings_from(env, tmp_path, monkeypatch), "checkpoints")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "quanta", "checkpoints", "http://minio:9000")


def test_env_example_documents_the_store() -> None:
    """Every store variable is in .env.example, commented: unset is the local store, and
    an uncommented empty endpoint, region, part size or cache folder would be a value."""
    lines = (REPO / ".env.example").read_text().splitlines()
    commented = {m.group(1) for line in lines
                 if (m := re.match(r"#\s*([A-Z][A-Z0-9_]*)=", line))}
    assert {*STORE_ENV, "QUANTA_S3_PART_BYTES", "QUANTA_STORE_CACHE_DIR"} <= commented
    values = env_example()
    for key in ("QUANTA_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "QUANTA_S3_PART_BYTES",
                "QUANTA_STORE_CACHE_DIR"):
        assert values.get(key, "unset") != "", f"{key} is set to an empty value"
    assert values.get("QUANTA_STORE_URL", "") == ""  # the local folders by default


def test_env_example_configures_the_service() -> None:
    from quanta_jobs.settings import Settings

    values = env_example()
    assert "QUANTA_API_TOKENS" in values and "POSTGRES_PASSWORD" in values
    # made by docker-compose.yml from POSTGRES_*: the password is set in one place
    assert "QUANTA_DATABASE_URL" not in values and "QUANTA_BROKER_URL" not in values
    compose_only = {"QUANTA_API_PORT", "QUANTA_GPUS", "QUANTA_WORKERS_PER_GPU",
                    "QUANTA_GPU_MEMORY_MB", "QUANTA_S3_PORT", "QUANTA_HOST_NAME",
                    "QUANTA_BASE_IMAGE"}
    fields = {f"QUANTA_{name.upper()}" for name in Settings.model_fields}
    commented = {m.group(1) for line in (REPO / ".env.example").read_text().splitlines()
                 if (m := re.match(r"#\s*(QUANTA_[A-Z0-9_]*)=", line))}
    for key in set(values) | commented:
        if key.startswith("QUANTA_") and key not in compose_only:
            assert key in fields, f"{key} is not a setting"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_dockerfile_builds_on_tensorflow_gpu() -> None:
    text = (REPO / "Dockerfile.gpu").read_text()
    # the official image by default; another (a mirror, a local stand-in) by build argument
    assert re.search(r"^ARG BASE_IMAGE=tensorflow/tensorflow:2\.21\.0-gpu\s*$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}\s*$", text, re.M)
    install = re.search(r"pip install (\S+)", text)
    # the service's extras, not [cpu]/[gpu]: the base image has TensorFlow
    assert install is not None and install.group(1) == '".[service,client]"'


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
    assert {"/var/lib/quanta/checkpoints", "/var/lib/quanta/cache"} <= folders
    for folder in sorted(folders):
        path = PurePosixPath(folder)
        assert path in created, f"{folder} is not created in the image (Docker makes it root's)"
        assert path in owned, f"{folder} is not chowned to {user} after it is created"
    for key in ("QUANTA_ARTIFACTS_DIR", "QUANTA_UPLOADS_DIR", "QUANTA_DATA_DIR",
                "QUANTA_CHECKPOINTS_DIR", "QUANTA_STORE_CACHE_DIR"):
        # the service writes where the volumes are (the cache a folder of its own)
        assert env.get(key) in mounted, f"{key}={env.get(key)} is not a mounted volume"
    assert "worker" in mounted[env["QUANTA_STORE_CACHE_DIR"]]
    assert len({env[key] for key in ("QUANTA_ARTIFACTS_DIR", "QUANTA_UPLOADS_DIR",
                                     "QUANTA_DATA_DIR", "QUANTA_CHECKPOINTS_DIR",
                                     "QUANTA_STORE_CACHE_DIR")}) == 5


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


@pytest.mark.parametrize("workers", [0, 1])
def test_quanta_serve_starts_and_stops_cleanly(tmp_path: Path, workers: int) -> None:
    """Real uvicorn over HTTP (and a real worker); SIGTERM stops everything in time."""
    live = LiveService(tmp_path, workers, stop_timeout=20)
    try:
        live.wait_ready(timeout=120)
        assert httpx.get(f"{live.url}/healthz", timeout=5).json() == {"status": "ok"}

        def readyz() -> httpx.Response | None:
            """Ready once the database and broker answer and, when it starts workers, one
            beats: until then only the workers are missing."""
            ready = httpx.get(f"{live.url}/readyz", timeout=5)
            if ready.status_code == 200:
                return ready
            assert ready.json()["workers"] == 0 and workers, ready.json()
            return None

        ready = wait_until(readyz, 180, "/readyz answering 200 (a worker ready)", interval=0.3)
        assert ready.json()["workers"] == workers
        if workers:
            response = httpx.post(f"{live.url}/v1/jobs", json={"kind": "source", "spec": {
                "source_task": "digits", "show_only_build": True, "width_multiplier": 0.0625}})
            assert response.status_code == 201
            with httpx.Client(base_url=live.url, timeout=30) as http:
                job = wait_job(http, response.json()["id"], timeout=90)
            assert job["status"] == "succeeded", f"{job}\n{live.text()[-3000:]}"
        began = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        assert live.process.wait(timeout=40) == 0
        assert time.monotonic() - began < 30
        if workers:  # the worker subprocess is gone too (before `stop` would kill it)
            assert subprocess.run(["pgrep", "-g", str(live.process.pid)],
                                  capture_output=True).returncode != 0
    finally:
        live.stop()
    text = live.text()
    assert "Traceback" not in text, text
    if workers:
        assert "started worker0" in text


def test_every_setting_is_documented() -> None:
    """A limit users cannot find is a limit they hit blind: each field of `Settings` has
    its row in the settings table of docs/service.md."""
    from quanta_jobs.settings import Settings

    table = (REPO / "docs" / "service.md").read_text()
    missing = [f"QUANTA_{name.upper()}" for name in Settings.model_fields
               if f"`QUANTA_{name.upper()}`" not in table]
    assert not missing, f"settings missing from docs/service.md: {missing}"
