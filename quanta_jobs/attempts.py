"""Each attempt of a job writes its own folders; the one the database says won is promoted.

A job may have two workers at once: one that lost the database (or was frozen) and still
trains, and the one the sweeper gave the job to meanwhile. So no attempt writes the
job's folder `ARTIFACTS_DIR/{job}/` itself. Attempt `n` writes

- its outputs to `ARTIFACTS_DIR/.attempts/{job}/{n}/` (the same volume as the job's
  folder, so that promoting it is one atomic rename),
- its checkpoints to `CHECKPOINTS_DIR/{job}/{n}/`,
- once it ended, its outcome to `ARTIFACTS_DIR/.attempts/{job}/{n}.outcome.json`: the
  status, the result and the artifact index (sizes and SHA-256, computed before any
  database transaction), so that an outcome the database never heard of is recorded
  later by whoever finds it (the sweeper, or the worker's next start), never lost with
  the checkpoints.

The attempt then records its end with a compare-and-swap on (job, attempt, worker)
(`record`), and only if that wins renames its folder over the job's (`promote`). A
losing attempt's folders are discarded. A resumed attempt copies the checkpoints and
outputs of the latest earlier attempt into its own folders (`worker.checkpoints`).

Job ids are hex, so `.attempts` never collides with a job's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from quanta_jobs import crud
from quanta_jobs.crud import ArtifactInfo
from quanta_jobs.job_state import TERMINAL, JobStatus, transition
from quanta_jobs.models import Job, db_now
from quanta_jobs.settings import Settings
from quanta_spec.files import atomic_write

log = logging.getLogger(__name__)
ATTEMPTS = ".attempts"
OUTCOME_SUFFIX = ".outcome.json"


def root(settings: Settings, job_id: str) -> Path:
    """Every attempt's outputs and outcomes of `job_id`."""
    return settings.artifacts_dir / ATTEMPTS / job_id


def output_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return root(settings, job_id) / str(attempt)


def checkpoint_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return settings.checkpoints_path / job_id / str(attempt)


def outcome_path(settings: Settings, job_id: str, attempt: int) -> Path:
    return root(settings, job_id) / f"{attempt}{OUTCOME_SUFFIX}"


def earlier(settings: Settings, job_id: str, attempt: int) -> list[int]:
    """Attempts before `attempt` that left checkpoints, latest first."""
    found = []
    folder = settings.checkpoints_path / job_id
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.isdigit() and int(entry.name) < attempt and entry.is_dir():
                found.append(int(entry.name))
    return sorted(found, reverse=True)


@dataclass
class SavedOutcome:
    """How an attempt ended, as written next to its outputs before the database hears."""

    attempt: int
    worker: str
    status: JobStatus
    fields: dict[str, Any] = field(default_factory=dict)
    artifacts: list[ArtifactInfo] = field(default_factory=list)


def save_outcome(settings: Settings, job_id: str, outcome: SavedOutcome) -> None:
    """Written atomically: a crash leaves the old file or none, never half of one."""
    data = {**asdict(outcome), "status": outcome.status.value,
            "artifacts": [asdict(a) for a in outcome.artifacts]}
    atomic_write(outcome_path(settings, job_id, outcome.attempt), json.dumps(data))


def load_outcome(settings: Settings, job_id: str, attempt: int) -> SavedOutcome | None:
    path = outcome_path(settings, job_id, attempt)
    try:
        data = json.loads(path.read_text())
        return SavedOutcome(int(data["attempt"]), str(data["worker"]), JobStatus(data["status"]),
                            dict(data["fields"]),
                            [ArtifactInfo(**a) for a in data["artifacts"]])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unreadable outcome %s; ignored", path)
        return None


def record(session: Session, job: Job, outcome: SavedOutcome) -> None:
    """The attempt's end in one short transaction (committed): the status change only if
    the job is still running as that attempt of that worker (else `ConcurrentChange`),
    and its artifact index, hashed beforehand."""
    transition(session, job, outcome.status, owner=outcome.worker, attempt=outcome.attempt,
               **outcome.fields)
    if outcome.status in TERMINAL:
        crud.replace_artifacts(session, job.id, outcome.artifacts)
    session.commit()


@contextlib.contextmanager
def _locked(job_id: str, settings: Settings) -> Iterator[None]:
    """Two processes promoting the same recorded attempt (a worker and the sweeper) take
    turns; the second finds the work done."""
    folder = root(settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(settings: Settings, job_id: str, attempt: int) -> None:
    """Rename the recorded attempt's outputs over the job's folder, then drop every
    attempt's folders (the losers' too). Call only once `record` committed."""
    staging = output_dir(settings, job_id, attempt)
    final = settings.artifacts_dir / job_id
    with _locked(job_id, settings):
        if staging.is_dir():
            if final.exists():  # left by an older release, or a half-done promotion
                aside = root(settings, job_id) / f"replaced-{uuid.uuid4().hex}"
                os.rename(final, aside)
            os.rename(staging, final)
        elif not final.is_dir():
            final.mkdir(parents=True, exist_ok=True)  # an attempt that wrote nothing
    discard(settings, job_id)


def discard(settings: Settings, job_id: str, attempt: int | None = None) -> None:
    """Remove one attempt's folders, or (no `attempt`) every attempt's and checkpoint."""
    if attempt is None:
        shutil.rmtree(root(settings, job_id), ignore_errors=True)
        shutil.rmtree(settings.checkpoints_path / job_id, ignore_errors=True)
        return
    shutil.rmtree(output_dir(settings, job_id, attempt), ignore_errors=True)
    shutil.rmtree(checkpoint_dir(settings, job_id, attempt), ignore_errors=True)


def settle_leftovers(session: Session, settings: Settings, limit: int = 100) -> int:
    """Finish what a worker stopped between recording an end and promoting it, and drop
    the folders of jobs that ended without one (cancelled while queued, failed by the
    sweeper, deleted). Jobs ended less than `stale_after_s` ago are left to their
    worker; running and queued ones keep their attempts (the next resumes from them).
    Returns how many jobs' folders were settled."""
    base = settings.artifacts_dir / ATTEMPTS
    if not base.is_dir():
        return 0
    names = sorted(entry.name for entry in base.iterdir() if entry.is_dir())[:limit]
    if not names:
        return 0
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(names)))}
    quiet = session.scalar(select(db_now(settings.stale_after_s)))
    settled = 0
    for name in names:
        job = jobs.get(name)
        if job is not None and (job.status not in TERMINAL or job.finished_at is None
                                or (quiet is not None and job.finished_at > quiet)):
            continue
        saved = None if job is None else load_outcome(settings, job.id, job.attempts)
        if job is not None and saved is not None and saved.worker == job.worker \
                and saved.status == job.status:
            log.warning("job %s: promoting attempt %d, recorded but not promoted by %s",
                        job.id, saved.attempt, saved.worker)
            promote(settings, job.id, saved.attempt)
        else:
            discard(settings, name)
        settled += 1
    return settled
