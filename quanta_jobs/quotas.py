"""What one owner may ask of the service: the work a job or study may plan, the jobs it
may have queued, and the bytes it may keep stored.

A spec's types allow 10 000 runs of 100 000 epochs; one such request would hold a GPU
for years. `check_work` bounds runs × epochs × samples (a witness doubles it) per job
and per study, where samples is `nb_of_*samples` or, when absent, the task's training
split (the built-in tasks' sizes from `quanta_spec.tasks`, an uploaded `.npz`'s
header, or the images of an image zip's training split, from its directory).
`stored_bytes` sums an owner's uploads and job files, which
`QUANTA_MAX_STORED_BYTES_PER_OWNER` caps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quanta_jobs.errors import InsufficientStorage, Invalid
from quanta_jobs.file_checks import FileLimits, image_zip_train_size, npz_headers
from quanta_jobs.models import Artifact, Job, Upload
from quanta_jobs.settings import Settings
from quanta_spec.images import image_zip_path
from quanta_spec.scores import ScoresSpec
from quanta_spec.tasks import TASKS

LOC = ("body", "spec")


def _train_size(task: str, limits: FileLimits | None = None) -> int:
    if task.startswith("npz:"):
        try:
            return int(npz_headers(Path(task[len("npz:"):]))["x_train"][0][0])
        except (ValueError, OSError):
            return 0  # the worker reports what is wrong with the file
    zipped = image_zip_path(task)
    if zipped is not None:
        try:
            return image_zip_train_size(Path(zipped), limits)
        except (ValueError, OSError):
            return 0  # the worker reports what is wrong with the file
    builtin = TASKS.get(task)
    return builtin.train_size if builtin is not None else 0


def planned_work(local: Any, nb_of_jobs: int = 1, witnesses: int | None = None,
                 limits: FileLimits | None = None) -> tuple[int, str, str]:
    """(samples × epochs × runs, the epochs field, how it was counted) of a resolved spec;
    `nb_of_jobs` multiplies it for a study (its spec is one child's), whose witnesses
    are `witnesses` trainings (one per run), not one per job. `limits` bound what is read
    of an image zip's directory to count its samples."""
    if hasattr(local, "target_task"):  # a transfer (or a study's child)
        samples = _train_size(local.target_task, limits)
        if local.nb_of_target_samples:
            samples = min(samples, local.nb_of_target_samples) or local.nb_of_target_samples
        epochs, field = local.nb_of_target_epochs, "nb_of_target_epochs"
        if witnesses is None:
            witnesses = local.nb_of_runs * nb_of_jobs if local.witness else 0
        runs = local.nb_of_runs * nb_of_jobs + witnesses
        how = (f"{runs} runs{' (witness included)' if witnesses else ''} × "
               f"{epochs} epochs × {samples} samples")
    else:
        samples = _train_size(local.source_task, limits)
        if local.nb_of_samples:
            samples = min(samples, local.nb_of_samples) or local.nb_of_samples
        epochs, field, runs = local.nb_of_epochs, "nb_of_epochs", 1
        how = f"{epochs} epochs × {samples} samples"
    return runs * epochs * samples, field, how


def check_work(settings: Settings, local: Any, *, study_jobs: int | None = None,
               study_witnesses: int | None = None) -> None:
    """422 naming the epochs field when the planned work is over its ceiling."""
    if getattr(local, "show_only_build", False) or isinstance(local, ScoresSpec):
        return  # nothing trains (a scores job is one inference pass)
    work, field, how = planned_work(local, study_jobs or 1, study_witnesses,
                                    FileLimits.from_settings(settings))
    limit, setting = ((settings.max_study_work, "QUANTA_MAX_STUDY_WORK") if study_jobs
                      else (settings.max_job_work, "QUANTA_MAX_JOB_WORK"))
    if limit and work > limit:
        what = "study" if study_jobs else "job"
        raise Invalid(f"this {what} plans {how} = {work} sample-epochs, over the limit of "
                      f"{limit} ({setting}); ask for fewer runs, epochs or samples",
                      loc=(*LOC, field))


def stored_bytes(session: Session, owner: str) -> int:
    """Bytes an owner keeps: its uploads and the recorded files of its jobs."""
    uploads = session.scalar(select(func.coalesce(func.sum(Upload.size), 0))
                             .where(Upload.owner == owner)) or 0
    files = session.scalar(select(func.coalesce(func.sum(Artifact.size), 0))
                           .join(Job, Job.id == Artifact.job_id)
                           .where(Job.owner == owner)) or 0
    return int(uploads) + int(files)


def check_storage(session: Session, settings: Settings, owner: str, adding: int = 0,
                  held: int = 0) -> None:
    """507 when `owner` keeps (or would keep, with the `held` bytes of its uploads still
    streaming and `adding` more) over its quota."""
    cap = settings.max_stored_bytes_per_owner
    if not cap:
        return
    used = stored_bytes(session, owner)
    if used + held + adding > cap:
        extra = "".join([f" (+{held} of uploads in progress)" if held else "",
                         f" (+{adding} new)" if adding else ""])
        raise InsufficientStorage(
            f"you keep {used} bytes of uploads and job files{extra}"
            f", over the quota of {cap} (QUANTA_MAX_STORED_BYTES_PER_OWNER); delete uploads "
            "(DELETE /v1/uploads/{id}) or finished jobs (DELETE /v1/jobs/{id}) first")
