"""Fixtures shared by more than one of the suite's folders, and the checks every test gets.

Real parts throughout: the API runs against real SQLite and PostgreSQL databases
(each test session gets its own PostgreSQL schema, dropped at the end, so parallel
or leftover runs never meet), stores against a real S3-protocol server. Helpers that are
not fixtures live in `tests.support`; a folder's own fixtures in its own conftest.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import host_guard, tiers
from tests.support.databases import PG_SERVER, empty_tables
from tests.support.files import keras_zip_bytes
from tests.support.jobs import TINY_SOURCE, scan
from tests.support.net import port_open
from tests.support.reference_files import reference_weights_bytes

# In-process test clients (Starlette's TestClient) name their host `testserver`; the
# services the tests start as processes get the product's default (service_env).
os.environ["QUANTA_ALLOWED_HOSTS"] = "127.0.0.1,localhost,::1,testserver"


# --- the tiers (tests.support.tiers) ------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--tier", choices=tiers.TIERS, default=None,
                     help="fast: all but the slow tests (the default run); slow: only them; "
                          "all: both. Default: fast, or all when tests are named.")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    paths = {id(item): Path(str(item.path)).relative_to(root).as_posix() for item in items}
    for item in items:
        if paths[id(item)] in tiers.SLOW_FILES:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: tiers.run_order(paths[id(item)]))  # stable: files stay whole
    tier = config.getoption("--tier")
    if tier is None:  # tests named on the command line, or chosen by -m, run whatever their tier
        named = [a for a in config.args if Path(a.split("::")[0]).resolve() != root / "tests"]
        tier = "all" if named or config.option.markexpr else "fast"
    if tier == "all":
        return
    keep = [i for i in items if (i.get_closest_marker("slow") is not None) == (tier == "slow")]
    kept = {id(item) for item in keep}
    config.hook.pytest_deselected(items=[i for i in items if id(i) not in kept])
    items[:] = keep


# --- the host as the suite found it ------------------------------------------------------
_HOST_BEFORE = pytest.StashKey[host_guard.HostState]()
_HOST_LEFT = pytest.StashKey[list[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # once, in the process that runs the rest
        host_guard.start_session()  # before xdist starts its workers: they inherit it
        session.config.stash[_HOST_BEFORE] = host_guard.snapshot()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if it left processes, namespaces, links or mounts on the host (they are
    removed, so the next run and the host's own services start from a clean host)."""
    before = session.config.stash.get(_HOST_BEFORE, None)
    if before is None:
        return
    extra = host_guard.leftovers(before)
    lines = host_guard.describe(extra)
    if lines:
        host_guard.clean(extra)
        session.config.stash[_HOST_LEFT] = lines
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_HOST_LEFT, None)
    if lines:
        terminalreporter.section("the suite did not leave the host as it found it", red=True)
        for line in lines:
            terminalreporter.line(f"left (now removed): {line}")


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


# --- jobs and files the API serves ---------------------------------------------------
@pytest.fixture
def upload(client: Any) -> Callable[..., Any]:
    """POST a file to /v1/uploads; returns the response."""

    def post(name: str, content: bytes, kind: str | None = None) -> Any:
        data = {"kind": kind} if kind is not None else {}
        return client.post("/v1/uploads", files={"file": (name, content)}, data=data)

    return post


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


# --- an S3-protocol server (moto's standalone server, its own process) -------------------

@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto server with the bucket `tests.support.s3server.BUCKET`, credentials in
    the environment; skips where moto cannot run."""
    from tests.support.s3server import BUCKET, S3_ENV, make_bucket, moto_missing, moto_server

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
    from tests.support.s3server import BUCKET

    if request.param == "local":
        return LocalStore(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(BUCKET, f"t-{uuid.uuid4().hex[:10]}/artifacts", endpoint_url=endpoint,
                   part_bytes=5 * MiB)
