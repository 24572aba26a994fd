"""Celery's own tools see the workers on Redis: `inspect ping` answers, a worker sends
task events (what Flower and `celery events` read) by default, and a real Flower shows it
Online with its tasks."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import port_open
from tests.support.processes import WorkerProcess, service_env
from tests.support.waiting import wait_until

REDIS = "redis://127.0.0.1:6379/8"  # a database no other test flushes

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not port_open("127.0.0.1", 6379), reason="no Redis")]


def test_a_worker_answers_ping_and_sends_task_events(tmp_path: Path) -> None:
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.queue import TASK_NAME, make_celery, send_run_job
    from quanta_jobs.settings import Settings

    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'quanta.db'}", "broker_url": REDIS,
        "queue": f"tools-{uuid.uuid4().hex[:8]}", "artifacts_dir": tmp_path / "artifacts"}
    # No QUANTA_TASK_EVENTS: the default sends them on Redis.
    upgrade(values["database_url"])
    worker = WorkerProcess(service_env(**values), tmp_path / "worker.log", "tools")
    app = make_celery(Settings(**values))
    try:
        worker.wait_ready()
        replies = app.control.inspect(timeout=5).ping() or {}
        assert any(name.startswith("tools@") and reply == {"ok": "pong"}
                   for name, reply in replies.items()), replies
        seen: list[dict[str, Any]] = []
        done, listening_now = threading.Event(), threading.Event()

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "test-probe":
                listening_now.set()
            if event["type"].startswith("task-") and event.get("name", TASK_NAME) == TASK_NAME:
                seen.append(event)
            if event["type"] in ("task-succeeded", "task-failed"):
                done.set()

        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": on_event})
            listening = threading.Thread(
                target=lambda: receiver.capture(limit=None, timeout=60, wakeup=True),
                daemon=True)
            listening.start()
            # Events go out on Redis pub/sub: one sent before the receiver has subscribed is
            # gone, so probe until the receiver hears its own events, then send the task.
            with app.events.default_dispatcher() as dispatcher:
                for _ in range(100):
                    dispatcher.send("test-probe")
                    if listening_now.wait(0.2):
                        break
            assert listening_now.is_set(), "the event receiver never heard its own probe"
            send_run_job(app, "no-such-job")  # the worker finds nothing to do, and says so
            assert done.wait(60), (seen, worker.text()[-3000:])
            receiver.should_stop = True
        types = [event["type"] for event in seen]
        assert "task-received" in types and "task-started" in types, types
    finally:
        worker.stop()


def test_flower_shows_the_worker_online_and_its_tasks(tmp_path: Path) -> None:
    """A real Flower on the project's defaults: Celery's heartbeat makes the worker Online
    (the service's own liveness rows do not reach Flower), and its task events list the
    job the worker ran."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from quanta_jobs.migrate import upgrade
    from quanta_jobs.queue import TASK_NAME, make_celery, send_run_job
    from quanta_jobs.settings import Settings
    from tests.support.net import free_port

    pytest.importorskip("flower")
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'quanta.db'}", "broker_url": REDIS,
        "queue": f"flower-{uuid.uuid4().hex[:8]}", "artifacts_dir": tmp_path / "artifacts"}
    upgrade(values["database_url"])
    # Flower's HTTP API answers without a login only when told to (the UI does anyway).
    env = {**service_env(**values), "FLOWER_UNAUTHENTICATED_API": "true"}
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 - closed below
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.tasks:app", "flower",
         f"--port={port}", "--address=127.0.0.1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(env, tmp_path / "worker.log", "flowered")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def until(what: str, test: Callable[[], Any], timeout: float = 120) -> Any:
        """`wait_until` on Flower, failing at once if it exits, with its log's tail."""

        def found() -> Any:
            assert flower.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]
            try:
                return test()
            except httpx.TransportError:
                return None

        try:
            return wait_until(found, timeout, what, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n"
                                 f"{(tmp_path / 'flower.log').read_text()[-2000:]}") from None

    try:
        worker.wait_ready()
        online = until("Flower never showed the worker Online", lambda: {
            name: up for name, up in http.get("/api/workers", params={
                "status": "true"}).json().items() if name.startswith("flowered@") and up})
        assert online
        send_run_job(make_celery(Settings(**values)), "no-such-job")
        tasks = until("Flower never listed the task", lambda: http.get("/api/tasks").json())
        assert any(task.get("name") == TASK_NAME for task in tasks.values()), tasks
    finally:
        http.close()
        worker.stop()
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(30)
        log.close()
