"""A real `quanta-serve` (API and workers) in a folder of its own, on a free port."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.processes import service_env


class LiveService:
    """`python -m api.serve --port P --workers N` on the embedded SQLite database and broker
    under `root` (or the `database_url` given); its output goes to `root/serve.log`."""

    def __init__(self, root: Path, workers: int = 1, **settings: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = service_env(**{
            "database_url": f"sqlite:///{root / 'quanta.db'}",
            "broker_url": f"sqla+sqlite:///{root / 'broker.db'}",
            "artifacts_dir": root / "artifacts", "uploads_dir": root / "uploads",
            "requeue_interval_s": 2, **settings})
        self.log = root / "serve.log"
        self._handle = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.serve", "--port", str(self.port),
             "--workers", str(workers), "--stop-timeout", "10"],
            env=self.env, cwd=root, stdout=self._handle, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        """Until the API answers (jobs wait in the queue for the workers to start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"quanta-serve did not start:\n{self.text()[-4000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._handle.close()


@contextmanager
def running_service(root: Path, workers: int = 1, **settings: Any) -> Iterator[LiveService]:
    """A `LiveService` that answers, stopped when the block ends (for module fixtures)."""
    live = LiveService(root, workers=workers, **settings)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()
