"""Fixtures of the service tests (`tests/test_api*.py`, `tests/test_service*.py`).

Real parts throughout: the API runs against real SQLite and PostgreSQL databases
(each test session gets its own PostgreSQL schema, dropped at the end, so parallel
or leftover runs never meet), and end-to-end tests start real Celery workers.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from reference_files import reference_weights_bytes
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
# In-process test clients (Starlette's TestClient) name their host `testserver`; the
# services the tests start as processes get the product's default (service_env).
os.environ["QUANTA_ALLOWED_HOSTS"] = "127.0.0.1,localhost,::1,testserver"
PG_SERVER = os.environ.get("QUANTA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_SERVER = os.environ.get("QUANTA_TEST_REDIS", "redis://127.0.0.1:6379/5")
TINY_SOURCE = {"source_task": "digits", "nb_of_epochs": 2, "nb_of_samples": 64,
               "width_multiplier": 0.0625, "seed": 1}


# --- the host as the suite found it ------------------------------------------------------
@pytest.fixture(autouse=True)
def _dev_null_stays_a_device(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that wrote a file over /dev/null (an atomic rename onto it) once left the
    host a plain file there, and the host's services that write to it (RabbitMQ) failed
    until the machine crawled. Any test that does so again fails, naming itself."""
    yield
    import stat

    if not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        restored = ""
        if os.geteuid() == 0:  # put the device back for the host and the other tests
            os.remove(os.devnull)
            os.mknod(os.devnull, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.chmod(os.devnull, 0o666)
            restored = " (put back)"
        pytest.fail(f"{request.node.nodeid} replaced {os.devnull} with a plain file{restored}")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- databases -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema of the test database, dropped afterwards."""
    from quanta_jobs.db import make_engine

    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schema = f"quanta_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_SERVER)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL database 'test' is not usable: {exc}")
    try:
        yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql",
                                                                marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database, once per backend per session."""
    from quanta_jobs.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'quanta.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


def empty_tables(database_url: str) -> None:
    """Remove the rows earlier tests left in a (session-wide) migrated database."""
    from quanta_jobs.db import make_engine

    engine = make_engine(database_url)
    with engine.begin() as conn:
        for table in ("artifacts", "jobs", "uploads", "upload_holds"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Any:
    """Settings on the backend under test, with empty tables and private folders."""
    from quanta_jobs.settings import Settings

    empty_tables(database_url)
    return Settings(
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifacts_dir=tmp_path / "artifacts",
        uploads_dir=tmp_path / "uploads",
        migrate_on_start=False,
        requeue_interval_s=0,
        max_upload_bytes=1024 * 1024,
    )


@pytest.fixture
def app(settings: Any) -> Any:
    from api.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def db(app: Any) -> Iterator[Any]:
    """A session on the app's database, for arranging state the API cannot create."""
    with app.state.sessionmaker() as session:
        yield session


# --- files ----------------------------------------------------------------------------
def hdf5_bytes(datasets: dict[str, Any] | None = None) -> bytes:
    """A real HDF5 file (made with h5py), by default with content no model would accept."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for name, value in (datasets or {"not_weights": np.arange(10)}).items():
            handle.create_dataset(name, data=value)
    return buffer.getvalue()


def keras_zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Functional"}')
        archive.writestr("metadata.json", "{}")
    return buffer.getvalue()


def npz_bytes(n: int = 20, **overrides: Any) -> bytes:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_train": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8),
        "y_train": rng.integers(0, 3, n),
        "x_test": rng.integers(0, 255, (n // 2, 8, 8), dtype=np.uint8),
        "y_test": rng.integers(0, 3, n // 2),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def upload(client: Any) -> Callable[..., Any]:
    """POST a file to /v1/uploads; returns the response."""

    def post(name: str, content: bytes, kind: str | None = None) -> Any:
        data = {"kind": kind} if kind is not None else {}
        return client.post("/v1/uploads", files={"file": (name, content)}, data=data)

    return post


def scan(root: Path) -> list[Any]:
    """The artifact index of a job folder written by a test (what a worker records)."""
    from quanta_jobs.crud import ArtifactInfo
    from quanta_jobs.store import LocalStore

    listed = LocalStore(root).list(digests=True)
    return [ArtifactInfo(i.key, i.size, i.sha256 or "") for i in listed]


@pytest.fixture
def finished_job(db: Any, settings: Any) -> Callable[..., Any]:
    """Arrange a job that ran (queued -> running -> status) and wrote `files`."""
    from quanta_jobs import crud
    from quanta_jobs.job_state import JobStatus, transition

    def make(kind: str, spec: dict[str, Any], files: dict[str, bytes] | None = None,
             status: str = "succeeded") -> Any:
        job = crud.create_job(db, kind, spec)
        db.commit()
        if status == "queued":
            return job
        transition(db, job, JobStatus.RUNNING, worker="test@host")
        if status != "running":
            root = settings.artifacts_dir / job.id
            for relative, content in (files or {}).items():
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_bytes(content)
            crud.replace_artifacts(db, job.id, scan(root))
            transition(db, job, JobStatus(status),
                       error="boom" if status == "failed" else None)
        db.commit()
        return job

    return make


@pytest.fixture
def source_job(finished_job: Callable[..., Any]) -> Any:
    """A succeeded source job (its weights in the reference's layout, TINY_SOURCE's network;
    its model fake), for transfer specs to reference."""
    return finished_job("source", dict(TINY_SOURCE), {
        "digits_training/source.weights.h5": reference_weights_bytes(),
        "digits_training/source.keras": keras_zip_bytes(),
        "digits_training/training_metrics_of_source.jsonl": b'{"0": {"loss": 1.0}}\n',
    })


# --- processes ------------------------------------------------------------------------
def service_env(**values: Any) -> dict[str, str]:
    """The environment of a service subprocess: QUANTA_* from `values`, repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = env.get("QUANTA_TEST_CUDA", "")
    for key, value in values.items():
        env[f"QUANTA_{key.upper()}"] = str(value)
    return env


class WorkerProcess:
    """A real `python -m worker.main` subprocess, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path, name: str) -> None:
        self.log = log
        self._handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.main", "--name", name, "--loglevel", "INFO"],
            env=env, cwd=REPO, stdout=self._handle, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.text()[-4000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._handle.close()
        return int(self.process.returncode)


def wait_for(client: Any, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed",
             "cancelled"), timeout: float = 180) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {body.get('status')} after {timeout}s: {body}")


# --- an S3-protocol server (moto's standalone server, its own process) -------------------

@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto server with the bucket `tests.s3server.BUCKET`, credentials in
    the environment; skips where moto cannot run."""
    from tests.s3server import BUCKET, S3_ENV, make_bucket, moto_missing, moto_server

    reason = moto_missing()
    if reason:
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_ENV.items():
            patch.setenv(name, value)
        try:
            server = moto_server(log=log)
            endpoint = server.__enter__()
        except RuntimeError as exc:
            pytest.skip(f"moto's server did not start: {exc}")
        try:
            make_bucket(endpoint, BUCKET)
            yield endpoint
        finally:
            server.__exit__(None, None, None)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty artifact store of each backend: a local folder, and a prefix of its own in
    the moto server's bucket (tests never see each other's objects)."""
    from quanta_jobs.store import LocalStore, MiB, S3Store
    from tests.s3server import BUCKET

    if request.param == "local":
        return LocalStore(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(BUCKET, f"t-{uuid.uuid4().hex[:10]}/artifacts", endpoint_url=endpoint,
                   part_bytes=5 * MiB)


# --- an in-process worker (`JobRunner` with a `direct` sessionmaker): jobs, epochs -----

def new_job(runner: Any, kind: str, spec: dict[str, Any]) -> str:
    """A queued job in the runner's database, as the API would create it; its id."""
    from quanta_jobs import crud

    with runner.direct() as session:
        job = crud.create_job(session, kind, spec)
        session.commit()
        return str(job.id)


def after_epoch(runner: Any, epoch: int, action: Callable[[], None]) -> None:
    """Call `action` once a `JobRunner`'s job has written its progress for `epoch` (its
    checkpoint, and with a bucket its push, come before)."""
    original = runner._progress_hook

    def hook(job_id: str, *owner: Any) -> Callable[[Any], None]:
        inner = original(job_id, *owner)

        def on_epoch(event: Any) -> None:
            inner(event)
            if event.epoch == epoch:
                action()

        return on_epoch

    runner._progress_hook = hook


def watch_epochs(runner: Any) -> list[int]:
    """The epochs a `JobRunner` trains from now on, appended as they end (its own hook
    first restored, so an earlier `after_epoch` no longer acts)."""
    runner._progress_hook = type(runner)._progress_hook.__get__(runner)
    epochs: list[int] = []
    original = runner._progress_hook

    def hook(job_id: str, *owner: Any) -> Callable[[Any], None]:
        inner = original(job_id, *owner)

        def on_epoch(event: Any) -> None:
            epochs.append(event.epoch)
            inner(event)

        return on_epoch

    runner._progress_hook = hook
    return epochs
