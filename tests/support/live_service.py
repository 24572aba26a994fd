"""A real `quanta-serve` (API and workers) for the tests: one way to start it, wait for it,
and stop it with everything it started.

Every test that needs a live service goes through `LiveService` (or `running_service`):
the process runs in a session of its own, so that `stop` ends its workers too, even when
the test failed half-way, and the host is left as the suite found it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.processes import service_env
from tests.support.waiting import wait_until


def stop_process(process: subprocess.Popen[Any], grace: float = 30.0) -> int:
    """SIGTERM to a process the suite started in a session of its own, then, past `grace`
    seconds, SIGKILL to its whole process group (never anything else); its exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # workers its supervisor left behind
    return int(process.returncode)


def wait_http(url: str, process: subprocess.Popen[Any] | None, timeout: float, what: str,
              log: Path | None = None) -> httpx.Response:
    """Until GET `url` answers 200 (the response); fails at once, with the log's end, if
    `process` exits first."""

    def answered() -> httpx.Response | None:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: the process exited ({process.returncode})\n{tail}")
        try:
            response = httpx.get(url, timeout=5)
        except httpx.TransportError:
            return None
        return response if response.status_code == 200 else None

    return wait_until(answered, timeout, what, interval=0.2)


class LiveService:
    """`python -m api.serve --port P --workers N` on the embedded SQLite database and broker
    under `root` (or the `database_url`, `broker_url` given in `settings`), its output in
    `root/serve.log`; `args` are more command-line options (`--host`, `--log-level`)."""

    def __init__(self, root: Path, workers: int = 1, *, args: Sequence[str] = (),
                 stop_timeout: float = 10, **settings: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = service_env(**{
            "database_url": f"sqlite:///{root / 'quanta.db'}",
            "broker_url": f"sqla+sqlite:///{root / 'broker.db'}",
            "artifacts_dir": root / "artifacts", "uploads_dir": root / "uploads",
            "requeue_interval_s": 2, **settings})
        self.log_path = root / "serve.log"
        self._handle = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.serve", "--port", str(self.port),
             "--workers", str(workers), "--stop-timeout", str(stop_timeout), *args],
            env=self.env, cwd=root, stdout=self._handle, stderr=subprocess.STDOUT,
            start_new_session=True)

    @property
    def base(self) -> str:
        return self.url

    def wait_ready(self, timeout: float = 300, path: str = "/healthz") -> LiveService:
        """Until the API answers `path` (jobs wait in the queue for the workers to start;
        `/readyz` waits for them too)."""
        wait_http(self.url + path, self.process, timeout, f"quanta-serve answering {path}",
                  self.log_path)
        return self

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace: float = 60) -> int:
        code = stop_process(self.process, grace)
        self._handle.close()
        return code

    def __enter__(self) -> LiveService:
        return self.wait_ready()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@contextmanager
def running_service(root: Path, workers: int = 1, **settings: Any) -> Iterator[LiveService]:
    """A `LiveService` that answers, stopped when the block ends (for module fixtures)."""
    live = LiveService(root, workers=workers, **settings)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


@contextmanager
def running_api(env: dict[str, str], folder: Path) -> Iterator[str]:
    """The API alone (uvicorn on a free port, no workers: the test starts its own), in a
    session of its own, its log `folder/api.log`; its URL once it answers /healthz."""
    port = free_port()
    with open(folder / "api.log", "wb") as log:
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host",
                                "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                               env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", api, 120, "the API (uvicorn) answering",
                      folder / "api.log")
            yield url
        finally:
            stop_process(api, 30)
