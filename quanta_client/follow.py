"""Follow a job to its end with a progress bar: Server-Sent Events, or polling.

The bar counts epochs (of every run, or of every child of a study). Events are read
from `GET /v1/jobs/{id}/events`; a stream that breaks off is resumed from the last
event id, and if streaming does not work at all (a proxy that buffers, an old
service) the job is polled instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from quanta_client.api import ApiError, Client, Unreachable
from quanta_spec.jobs import TERMINAL

POLL_S = 1.0
#: Broken streams in a row before falling back to polling.
MAX_BROKEN_STREAMS = 5


def total_epochs(job: dict[str, Any]) -> int | None:
    """Epochs the whole job trains (None when unknown or none)."""
    spec = job["spec"]
    if spec.get("show_only_build"):
        return None
    if job["kind"] == "source":
        return int(spec.get("nb_of_epochs", 1))
    epochs = int(spec.get("nb_of_target_epochs", 1))
    if job["kind"] == "study":
        return int((job.get("progress") or {}).get("total", 0)) * epochs or None
    return int(spec.get("nb_of_runs", 1)) * epochs


def _where(data: dict[str, Any]) -> str:
    if data.get("layer") is None:
        return f"job {data.get('job', '')[:8]}"
    return f"job {data['job'][:8]} (layer {data['layer']}, run {data.get('run')})"


class _Bar:
    def __init__(self, job: dict[str, Any], stream: TextIO) -> None:
        self.job = job
        self.bar = tqdm(total=total_epochs(job), unit="epoch", file=stream, dynamic_ncols=True,
                        desc=f"{job['kind']} {job['id'][:8]} {job['status']}", leave=True)
        self.seen: set[tuple[Any, ...]] = set()
        self.children: dict[str, str] = {}

    def status(self, status: str) -> None:
        self.bar.set_description(f"{self.job['kind']} {self.job['id'][:8]} {status}",
                                 refresh=True)

    def event(self, name: str, data: dict[str, Any]) -> None:
        root = data.get("job") == self.job["id"]
        if name == "epoch":
            key = (data.get("job"), data.get("run"), data.get("epoch"))
            if key not in self.seen:
                self.seen.add(key)
                self.bar.update(1)
            quantas = data.get("quantas") or {}
            lam = " ".join(f"λs[{k}]={v.get('source'):.3f}" for k, v in quantas.items()
                           if isinstance(v, dict) and v.get("source") is not None)
            where = (f"run {data.get('run')}" if root or data.get("layer") is None
                     else f"layer {data['layer']} run {data.get('run')}")
            self.bar.set_postfix_str(f"{where} epoch {data.get('epoch')}/"
                                     f"{data.get('nb_of_epochs')} {lam}"[:70], refresh=True)
        elif name == "status" and root:
            self.status(str(data.get("status")))
        elif name == "status":
            self.children[data["job"]] = str(data.get("status"))
            if data.get("status") in ("failed", "cancelled") and self.job["kind"] == "study":
                reason = f": {data['error']}" if data.get("error") else ""
                self.bar.write(f"{_where(data)} {data['status']}{reason}")
            study = data.get("study")
            if study:
                self.status(f"running, {study['done']}/{study['total']} jobs done")

    def poll(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        if self.bar.total and "fraction" in progress:
            self.bar.n = round(float(progress["fraction"]) * self.bar.total)
            self.bar.refresh()
        self.status(job["status"])

    def close(self) -> None:
        self.bar.close()


def follow(client: Client, job: dict[str, Any], stream: TextIO | None = None,
           events: bool = True) -> dict[str, Any]:
    """Show the job's progress until it ends; returns the job as it ended."""
    bar = _Bar(job, stream or sys.stderr)
    try:
        if events and _follow_events(client, job["id"], bar):
            final = client.job(job["id"])
        else:
            final = _follow_polling(client, job["id"], bar)
        bar.poll(final)
        return final
    finally:
        bar.close()


def _follow_events(client: Client, job_id: str, bar: _Bar) -> bool:
    """True once the stream said `end`; False if streaming does not work here."""
    last, broken = 0, 0
    while broken < MAX_BROKEN_STREAMS:
        try:
            for seq, name, data in client.events(job_id, last):
                broken = 0
                if seq is not None:
                    last = seq
                if name == "end":
                    return True
                bar.event(name, data)
        except Unreachable:
            time.sleep(min(2.0 * (broken + 1), 10.0))
        except ApiError as exc:
            if exc.status_code in (404, 405) and "no job" not in str(exc):
                return False  # a service without the events endpoint
            raise
        broken += 1
        if client.job(job_id)["status"] in TERMINAL:
            return True
    return False


def _follow_polling(client: Client, job_id: str, bar: _Bar) -> dict[str, Any]:
    while True:
        job = client.job(job_id)
        bar.poll(job)
        if job["status"] in TERMINAL:
            return job
        time.sleep(POLL_S)
