"""Each attempt of a job writes its own folders; the one the database says won is promoted.

A job may have two workers at once: one that lost the database (or was frozen) and still
trains, and the one the sweeper gave the job to meanwhile. So no attempt writes the
job's folder `{job}/` of the artifacts store itself. Attempt `n` writes

- its outputs to `.attempts/{job}/{n}/` of the artifacts store,
- its checkpoints to `{job}/{n}/` of the checkpoints store,
- once it ended, its outcome to `.attempts/{job}/{n}.outcome.json`: the status, the
  result and the artifact index (sizes and SHA-256, computed before any database
  transaction), so that an outcome the database never heard of is recorded later by
  whoever finds it (the sweeper, or the worker's next start), never lost with the
  checkpoints.

With the local store those are the folders themselves, written in place, and promotion
is one atomic rename. With a bucket the worker writes them in its cache
(`quanta_jobs.store.work_dir`) and `AttemptFiles.push` sends them (after every epoch,
and at the end), so that another host resumes the attempt; promotion copies on the
server, and until it is done readers find the files in the attempt's folder (`locate`).

The attempt then records its end with a compare-and-swap on (job, attempt, worker)
(`record`), and only if that wins moves its folder over the job's (`promote`). A
losing attempt's folders are discarded. A resumed attempt copies the checkpoints and
outputs of the latest earlier attempt into its own folders (`worker.checkpoints`).

Job ids are hex, so `.attempts` never collides with a job's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
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
from quanta_jobs.store import ArtifactStore, KeyNotFound, Mirror, store_from_settings, work_dir

log = logging.getLogger(__name__)
ATTEMPTS = ".attempts"
OUTCOME_SUFFIX = ".outcome.json"


def artifacts_store(settings: Settings) -> ArtifactStore:
    return store_from_settings(settings, "artifacts")


def checkpoints_store(settings: Settings) -> ArtifactStore:
    return store_from_settings(settings, "checkpoints")


def root_prefix(job_id: str) -> str:
    """Every attempt's outputs and outcomes of `job_id` (artifacts store)."""
    return f"{ATTEMPTS}/{job_id}"


def output_prefix(job_id: str, attempt: int) -> str:
    return f"{ATTEMPTS}/{job_id}/{attempt}"


def checkpoint_prefix(job_id: str, attempt: int) -> str:
    return f"{job_id}/{attempt}"


def outcome_key(job_id: str, attempt: int) -> str:
    return f"{ATTEMPTS}/{job_id}/{attempt}{OUTCOME_SUFFIX}"


def root(settings: Settings, job_id: str) -> str:
    """Where every attempt of `job_id` is kept, for messages."""
    return artifacts_store(settings).url(root_prefix(job_id))


def output_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    """The local folder this process writes the attempt's outputs in."""
    return work_dir(settings, "artifacts", output_prefix(job_id, attempt))


def checkpoint_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    """The local folder this process writes the attempt's checkpoints in."""
    return work_dir(settings, "checkpoints", checkpoint_prefix(job_id, attempt))


def earlier(settings: Settings, job_id: str, attempt: int) -> list[int]:
    """Attempts before `attempt` that left checkpoints, latest first."""
    names = checkpoints_store(settings).names(job_id)
    return sorted((int(n) for n in names if n.isdigit() and int(n) < attempt), reverse=True)


def locate(settings: Settings, job_id: str, attempt: int, path: str) -> str | None:
    """The artifacts-store key of a recorded file of a job: in the job's folder, or in
    the recorded attempt's while its promotion is under way (a bucket copies, so a job
    is recorded before its files have all reached its folder); None if neither has it."""
    store = artifacts_store(settings)
    for key in (f"{job_id}/{path}", f"{output_prefix(job_id, attempt)}/{path}"):
        if store.exists(key):
            return key
    return None


class AttemptFiles:
    """One attempt's local output and checkpoint folders and their copies in the store.

    `push` sends the outputs first, then the checkpoints: a checkpoint in the store
    never names an output that is not there too, so another host resumes from any push.
    With the local store both are the store's own folders and `push` only hashes."""

    def __init__(self, settings: Settings, job_id: str, attempt: int) -> None:
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.output = output_dir(settings, job_id, attempt)
        self.checkpoints = checkpoint_dir(settings, job_id, attempt)
        self._outputs = Mirror(artifacts_store(settings), output_prefix(job_id, attempt),
                               self.output)
        self._checkpoints = Mirror(checkpoints_store(settings),
                                   checkpoint_prefix(job_id, attempt), self.checkpoints)

    @property
    def remote(self) -> bool:
        """Whether the store is elsewhere (a bucket): files must be pushed to it."""
        return not self._outputs.in_place

    def push(self, checkpoints: bool = True) -> list[ArtifactInfo]:
        """Send what changed; returns the artifact index of the outputs."""
        strip = len(self._outputs.prefix) + 1
        index = [ArtifactInfo(info.key[strip:], info.size, info.sha256 or "")
                 for info in self._outputs.push()]
        if checkpoints:
            self._checkpoints.push()
        return index

    def drop_local(self) -> None:
        """Remove the local copies once the store holds them (a bucket only)."""
        if self.remote:
            shutil.rmtree(self.output, ignore_errors=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)


#: In an outcome's `fields`: the attempt was handed back by a worker stopping on purpose,
#: so it does not count against `max_attempts` (`Job.failed_attempts`).
HANDED_BACK = "handed_back"


@dataclass
class SavedOutcome:
    """How an attempt ended, as written next to its outputs before the database hears."""

    attempt: int
    worker: str
    status: JobStatus
    fields: dict[str, Any] = field(default_factory=dict)
    artifacts: list[ArtifactInfo] = field(default_factory=list)


def save_outcome(settings: Settings, job_id: str, outcome: SavedOutcome) -> None:
    """Stored whole: a crash leaves the old outcome or none, never half of one."""
    data = {**asdict(outcome), "status": outcome.status.value,
            "artifacts": [asdict(a) for a in outcome.artifacts]}
    artifacts_store(settings).put(outcome_key(job_id, outcome.attempt),
                                  json.dumps(data).encode())


def load_outcome(settings: Settings, job_id: str, attempt: int) -> SavedOutcome | None:
    store = artifacts_store(settings)
    key = outcome_key(job_id, attempt)
    try:
        with store.get(key) as reader:
            data = json.loads(reader.read())
        return SavedOutcome(int(data["attempt"]), str(data["worker"]), JobStatus(data["status"]),
                            dict(data["fields"]),
                            [ArtifactInfo(**a) for a in data["artifacts"]])
    except KeyNotFound:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unreadable outcome %s; ignored", store.url(key))
        return None


def record(session: Session, job: Job, outcome: SavedOutcome) -> None:
    """The attempt's end in one short transaction (committed): the status change only if
    the job is still running as that attempt of that worker (else `ConcurrentChange`),
    and its artifact index, hashed beforehand."""
    fields = dict(outcome.fields)
    if fields.pop(HANDED_BACK, False):
        fields["handbacks"] = Job.handbacks + 1
    transition(session, job, outcome.status, owner=outcome.worker, attempt=outcome.attempt,
               **fields)
    if outcome.status in TERMINAL:
        crud.replace_artifacts(session, job.id, outcome.artifacts)
    session.commit()


@contextlib.contextmanager
def _locked(settings: Settings, job_id: str) -> Iterator[None]:
    """Two processes promoting the same recorded attempt (a worker and the sweeper) take
    turns on one host; the second finds the work done. Through a bucket they may both
    copy: the same objects, so either order ends the same."""
    folder = artifacts_store(settings).local_dir(root_prefix(job_id))
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(settings: Settings, job_id: str, attempt: int) -> None:
    """Move the recorded attempt's outputs over the job's folder, then drop every
    attempt's folders (the losers' too). Call only once `record` committed."""
    store = artifacts_store(settings)
    with _locked(settings, job_id):
        moved = store.move_prefix(output_prefix(job_id, attempt), job_id)
        final = store.local_dir(job_id)
        if not moved and final is not None and not final.is_dir():
            final.mkdir(parents=True, exist_ok=True)  # an attempt that wrote nothing
    discard(settings, job_id)


def discard(settings: Settings, job_id: str, attempt: int | None = None) -> None:
    """Remove one attempt's folders, or (no `attempt`) every attempt's and checkpoint,
    in the store and in this process's work folders."""
    outputs, saved = artifacts_store(settings), checkpoints_store(settings)
    if attempt is None:
        prefixes = [(outputs, "artifacts", root_prefix(job_id)),
                    (saved, "checkpoints", job_id)]
    else:
        prefixes = [(outputs, "artifacts", output_prefix(job_id, attempt)),
                    (saved, "checkpoints", checkpoint_prefix(job_id, attempt))]
    for store, area, prefix in prefixes:
        store.delete_prefix(prefix)
        local = work_dir(settings, area, prefix)
        if store.local_dir(prefix) != local:
            shutil.rmtree(local, ignore_errors=True)


def drop_ended_work(session: Session, settings: Settings) -> int:
    """With a bucket, remove this host's work folders of jobs that have ended or are gone
    (a worker killed mid-job leaves its attempt's; the host that finished the job dropped
    only its own). A running or queued job's folders stay: another worker process of
    this host may be writing them. Returns how many jobs' folders went."""
    if artifacts_store(settings).local_dir("") is not None:
        return 0  # the local store: work folders are the store itself
    base = settings.store_cache_path / "work"
    folders: dict[str, list[Path]] = {}
    for parent in (base / "artifacts" / ATTEMPTS, base / "artifacts", base / "checkpoints"):
        if parent.is_dir():
            for entry in parent.iterdir():
                if entry.is_dir() and entry.name.isalnum():
                    folders.setdefault(entry.name, []).append(entry)
    if not folders:
        return 0
    live = set(session.scalars(select(Job.id).where(
        Job.id.in_(list(folders)), Job.status.not_in([s.value for s in TERMINAL]))))
    dropped = 0
    for job_id, paths in folders.items():
        if job_id not in live:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
            dropped += 1
    return dropped


def delete_job_files(settings: Settings, job_id: str) -> None:
    """Everything kept of a deleted job: its files, attempts and checkpoints."""
    artifacts_store(settings).delete_prefix(job_id)
    discard(settings, job_id)


def settle_leftovers(session: Session, settings: Settings, limit: int = 100) -> int:
    """Finish what a worker stopped between recording an end and promoting it, and drop
    the folders of jobs that ended without one (cancelled while queued, failed by the
    sweeper, deleted). Jobs ended less than `stale_after_s` ago are left to their
    worker; running and queued ones keep their attempts (the next resumes from them).
    Returns how many jobs' folders were settled."""
    names = [name for name in artifacts_store(settings).names(ATTEMPTS)
             if name.isalnum()][:limit]
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
