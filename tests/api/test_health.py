"""Probes, the OpenAPI schema, migrations, and the rule that the API never loads TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.support import REPO
from tests.support.processes import service_env


def test_healthz(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_everything_answers(client: Any) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body.pop("workers"), int)  # counted from the heartbeat rows
    assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_waits_for_the_workers_it_is_told_to(settings: Any, db: Any) -> None:
    """quanta-serve's API once said ready with no worker alive yet; with
    QUANTA_READY_MIN_WORKERS (quanta-serve sets 1 when it starts workers) it waits."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs import workers

    app = create_app(settings.model_copy(update={"ready_min_workers": 1}))
    with TestClient(app) as client:
        alive = client.get("/readyz").json()["workers"]
        response = client.get("/readyz")
        if alive == 0:
            assert response.status_code == 503
            assert response.json()["checks"]["workers"] == (
                "0 alive, 1 required (QUANTA_READY_MIN_WORKERS)")
        workers.beat(db, "gpu0@ready-check")
        try:
            response = client.get("/readyz")
            assert response.status_code == 200, response.json()
            assert response.json()["checks"]["workers"] == "ok"
        finally:
            workers.forget(db, "gpu0@ready-check")


def test_quanta_serve_asks_for_one_worker_when_it_starts_them(settings: Any,
                                                              monkeypatch: Any) -> None:
    from api.serve import serve_settings

    monkeypatch.delenv("QUANTA_READY_MIN_WORKERS", raising=False)
    assert serve_settings(settings, 2).ready_min_workers == 1
    assert serve_settings(settings, 0).ready_min_workers == 0  # the API alone
    monkeypatch.setenv("QUANTA_READY_MIN_WORKERS", "0")
    assert serve_settings(settings, 2).ready_min_workers == settings.ready_min_workers


def test_readyz_names_the_broker_that_is_down(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("unreachable")


def test_readyz_names_the_database_that_is_down(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    down = "postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2"
    app = create_app(settings.model_copy(update={"database_url": down}))
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"].startswith("unreachable") and checks["broker"] == "ok"


def test_openapi_documents_every_endpoint(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    expected = {
        ("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/{job_id}"),
        ("post", "/v1/jobs/{job_id}/cancel"), ("get", "/v1/jobs/{job_id}/artifacts"),
        ("get", "/v1/jobs/{job_id}/artifacts/{path}"), ("get", "/v1/jobs/{job_id}/archive"),
        ("post", "/v1/uploads"), ("get", "/v1/uploads"), ("get", "/v1/uploads/{upload_id}"),
        ("get", "/healthz"), ("get", "/readyz"),
    }
    found = {(method, path) for path, ops in schema["paths"].items() for method in ops}
    assert expected <= found
    for method, path in expected:
        operation = schema["paths"][path][method]
        assert operation.get("summary"), (method, path)
        ok = next(code for code in operation["responses"] if code.startswith("2"))
        assert operation["responses"][ok].get("content"), (method, path)
    create = schema["paths"]["/v1/jobs"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/JobOut")
    assert {"409", "422"} <= set(create["responses"])
    upload = schema["paths"]["/v1/uploads"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert "413" in upload["responses"]
    assert "RemoteTransferSpec" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_startup_applies_migrations(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import inspect

    from api.main import create_app
    from quanta_jobs.db import make_engine
    from quanta_jobs.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'new.db'}",
                        broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                        artifacts_dir=tmp_path / "a", requeue_interval_s=0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs").json()["total"] == 0
    engine = make_engine(settings.database_url)
    assert {"jobs", "uploads", "artifacts", "alembic_version"} <= set(
        inspect(engine).get_table_names())
    engine.dispose()


def test_migrate_command(tmp_path: Path) -> None:
    env = service_env(database_url=f"sqlite:///{tmp_path / 'm.db'}",
                      artifacts_dir=tmp_path / "artifacts")
    for command in ([sys.executable, "-m", "quanta_jobs.migrate"],
                    [sys.executable, "-m", "api.serve", "migrate"]):
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.db").is_file()


def test_api_process_never_imports_tensorflow(tmp_path: Path) -> None:
    """Start the app in a fresh interpreter, use it, and look at what it imported."""
    script = textwrap.dedent("""
        import io, json, sys
        import numpy as np
        from fastapi.testclient import TestClient
        from api.main import app
        buffer = io.BytesIO()
        np.savez(buffer, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.arange(4),
                 x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.arange(2))
        with TestClient(app) as client:
            codes = [
                client.get("/healthz").status_code,
                client.get("/readyz").status_code,
                client.post("/v1/jobs", json={"kind": "source",
                                              "spec": {"source_task": "digits"}}).status_code,
                client.get("/v1/jobs").status_code,
                client.post("/v1/uploads", files={"file": ("d.npz", buffer.getvalue())}
                            ).status_code,
                client.get("/openapi.json").status_code,
            ]
        loaded = [m for m in ("tensorflow", "keras", "quanta", "worker.tasks", "worker.runner")
                  if m in sys.modules]
        print(json.dumps({"codes": codes, "loaded": loaded}))
    """)
    env = service_env(database_url=f"sqlite:///{tmp_path / 'q.db'}",
                      broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                      artifacts_dir=tmp_path / "artifacts",
                      allowed_hosts="testserver")  # the test client's host name
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [200, 200, 201, 200, 201, 200]
    assert result["loaded"] == []


def test_workers_are_counted_by_the_databases_clock(client: Any, db: Any,
                                                    monkeypatch: Any) -> None:
    """A worker host whose clock is an hour behind still counts as alive, and a worker
    whose last beat is older than three heartbeats by the database's clock does not."""
    from datetime import timedelta

    from sqlalchemy import update

    from quanta_jobs import workers
    from quanta_jobs.models import WorkerBeat, db_now, utcnow

    behind = utcnow() - timedelta(hours=1)
    monkeypatch.setattr(workers, "utcnow", lambda: behind, raising=False)
    workers.beat(db, "gpu0@late-clock")
    monkeypatch.undo()
    assert client.get("/readyz").json()["workers"] == 1
    heartbeat_s = client.app.state.settings.heartbeat_s
    db.execute(update(WorkerBeat).values(seen_at=db_now(workers.ALIVE_BEATS * heartbeat_s + 5)))
    db.commit()
    assert client.get("/readyz").json()["workers"] == 0
    workers.forget(db, "gpu0@late-clock")
