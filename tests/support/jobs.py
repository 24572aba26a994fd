"""Jobs in the tests: the tiny source spec, waiting for a job to end, the artifact index a
worker records, and hooks into an in-process worker (`JobRunner` with a `direct` sessionmaker)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.support.waiting import wait_until

TINY_SOURCE = {"source_task": "digits", "nb_of_epochs": 2, "nb_of_samples": 64,
               "width_multiplier": 0.0625, "seed": 1}



#: The states a job ends in.
TERMINAL = ("succeeded", "failed", "cancelled")


def wait_job(client: Any, job_id: str, statuses: tuple[str, ...] = TERMINAL,
             timeout: float = 300) -> dict[str, Any]:
    """GET /v1/jobs/{id} until its status is one of `statuses` (the job's JSON). `client` is
    anything with `.get(path)` on the API: a TestClient, an httpx.Client with a base_url."""
    seen: dict[str, Any] = {}

    def ended() -> dict[str, Any] | None:
        seen.update(client.get(f"/v1/jobs/{job_id}").json())
        return dict(seen) if seen.get("status") in statuses else None

    try:
        return wait_until(ended, timeout, f"job {job_id} reaching {'/'.join(statuses)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen.get('status')}: {seen}") from None


def scan(root: Path) -> list[Any]:
    """The artifact index of a job folder written by a test (what a worker records)."""
    from quanta_jobs.crud import ArtifactInfo
    from quanta_jobs.store import LocalStore

    listed = LocalStore(root).list(digests=True)
    return [ArtifactInfo(i.key, i.size, i.sha256 or "") for i in listed]


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


def drain(runner: Any, db: Any, limit: int = 60) -> int:
    """Run queued jobs (oldest first) until none is left, as idle workers would."""
    from quanta_jobs.models import Job

    done = 0
    while True:
        db.expire_all()
        job = db.scalars(select(Job).where(Job.status == "queued", Job.kind != "study")
                         .order_by(Job.created_at, Job.study_run)).first()
        if job is None:
            return done
        runner.run(job.id, "w@host")
        done += 1
        assert done <= limit, "the study never stops adding runs"
