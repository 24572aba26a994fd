"""No request handler blocks the event loop on the database.

Sync routes run in FastAPI's thread pool; async ones (uploads, event streams) must hand
every database call to it too, or one slow query stalls every other request. Every
database call made while serving requests is checked to come from outside the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from quanta_jobs import job_events
from tests.support.files import npz_bytes


def _on_the_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_database_calls_never_run_on_the_event_loop(client: Any, app: Any, db: Any,
                                                    upload: Any, finished_job: Any) -> None:
    engine = app.state.sessionmaker.kw["bind"]
    calls: list[tuple[str, bool]] = []

    def record(name: str) -> Any:
        def listener(*_args: Any, **_kwargs: Any) -> None:
            calls.append((name, _on_the_event_loop()))
        return listener

    listeners = [(name, record(name)) for name in
                 ("checkout", "checkin", "before_cursor_execute", "commit", "rollback")]
    job = finished_job("transfer", {"layer_to_transfer": 1}, status="failed")
    job_events.record_status(db, job)
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        created = upload("data.npz", npz_bytes(), kind="dataset")  # an async route
        assert created.status_code == 201, created.text
        replayed = [client.post("/v1/uploads", files={"file": ("d.npz", npz_bytes())},
                                headers={"Idempotency-Key": "same-key"}) for _ in range(2)]
        assert [r.status_code for r in replayed] == [201, 200]
        with client.stream("GET", f"/v1/jobs/{job.id}/events") as response:  # async too
            assert "event: end" in response.read().decode()
        assert client.get(f"/v1/jobs/{job.id}").status_code == 200
        assert client.get("/v1/jobs").status_code == 200
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)
    assert {name for name, _ in calls} >= {"checkout", "before_cursor_execute", "commit"}
    on_loop = [name for name, loop in calls if loop]
    assert on_loop == [], f"database calls on the event loop: {on_loop}"
