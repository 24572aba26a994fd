"""Service processes the tests start: their environment, and a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import REPO
from tests.support.waiting import wait_until


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

    def wait_ready(self, timeout: float = 300) -> None:
        """Until Celery says the worker is ready; at once, with its log, if it exits first."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited before it was ready:\n{self.text()[-4000:]}")
            return " ready." in self.text()

        wait_until(ready, timeout, f"worker ready (its log: {self.log})", interval=0.2)

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
