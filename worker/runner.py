"""What a worker does with one job id: claim it, run the library, record the outcome.

Everything here is idempotent, because a broker may deliver a message twice: a job
is claimed with a compare-and-swap (queued -> running), so only one worker runs it;
a copy delivered while it runs is dropped; a job whose worker died (it is `running`
but its worker is us after a restart, or its heartbeat is stale) is put back to
queued and started again, up to `max_attempts` times. A job started again resumes
from its last finished epoch (`worker.checkpoints`), and database writes are retried
through an outage (`worker.db_retry`): a killed worker or a restarted database costs
at most the epoch in progress.

One writer per job folder: each attempt writes its own folders and is promoted to the
job's only if the database still says it owns the job (`quanta_jobs.attempts`), and a
worker whose heartbeats have not got through for `heartbeat_loss_s` stops the job
itself, before the sweeper (at `stale_after_s`, by the database's clock) gives it to
another worker.

TensorFlow and `quanta` are imported inside `_execute`, never at module level.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from quanta_jobs import attempts, crud
from quanta_jobs.db import make_engine, make_sessionmaker
from quanta_jobs.errors import ServiceError
from quanta_jobs.file_checks import FileLimits, check_spec_files
from quanta_jobs.job_state import TERMINAL, ConcurrentChange, JobKind, JobStatus, transition
from quanta_jobs.models import Job, db_now, utcnow
from quanta_jobs.queue import enqueue
from quanta_jobs.recovery import is_stale, recover
from quanta_jobs.refs import remote_spec, resolve_spec
from quanta_jobs.settings import Settings
from worker import checkpoints, datasets, hooks, job_plots, scores_job, tracking
from worker.context import JobContext
from worker.db_retry import RETRYABLE, DatabaseUnavailable, retry_db
from worker.results import write_model_summaries

log = logging.getLogger(__name__)
#: How long a progress write waits for the database (the next epoch writes again).
PROGRESS_RETRY_S = 2.0


@dataclass
class Outcome:
    status: str
    detail: str = ""


def _clean_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """JSON-safe metrics: floats, NaN/inf as null (PostgreSQL's JSON refuses NaN)."""
    return {str(k): _clean_number(v) for k, v in metrics.items()}


def clean_quantas(quantas: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {str(layer): clean_metrics(values) for layer, values in quantas.items()}


class Heartbeat:
    """A thread that stamps `heartbeat_at` (the database's clock) while the job runs, so
    others know we live; `silent_s` says how long since a stamp last got through, and
    `lost` that the database says the job is no longer this attempt's."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, worker: str,
                 period: float, attempt: int | None = None) -> None:
        self._factory, self._job_id, self._worker, self._period = factory, job_id, worker, period
        self._attempt = attempt
        self._last_ok = time.monotonic()  # the claim itself stamped the job
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            try:  # retried within one period; the next period tries again anyway
                retry_db(self._beat, what=f"heartbeat of job {self._job_id}",
                         budget_s=min(self._period, 5.0))
            except DatabaseUnavailable as exc:
                log.warning("%s", exc)
            except Exception:
                log.warning("heartbeat of job %s failed", self._job_id, exc_info=True)

    @property
    def silent_s(self) -> float:
        return time.monotonic() - self._last_ok

    def _beat(self) -> None:
        where = [Job.id == self._job_id, Job.status == JobStatus.RUNNING.value,
                 Job.worker == self._worker]
        if self._attempt is not None:
            where.append(Job.attempts == self._attempt)
        with self._factory() as session:
            stamped = session.execute(
                update(Job).where(*where).values(heartbeat_at=db_now())
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
        self._last_ok = time.monotonic()
        if not stamped:
            self.lost = True


class ShutdownAwareInterval(float):
    """`checkpoint_interval_s` as the library gets it: the usual least time between two
    checkpoints, but none once the worker is shutting down, so that the epoch that ends
    during a warm shutdown is saved whatever the interval (the library's `RunCheckpoint`
    asks `elapsed < interval`; as a subclass of float this object answers that
    comparison first). The library needs no knowledge of workers or signals for it."""

    stopping: threading.Event

    def __new__(cls, seconds: float, stopping: threading.Event) -> ShutdownAwareInterval:
        interval = super().__new__(cls, seconds)
        interval.stopping = stopping
        return interval

    def __gt__(self, other: object) -> bool:  # `elapsed < interval`, reflected
        if self.stopping.is_set():
            return False
        return float(self) > other  # type: ignore[operator]

    def __le__(self, other: object) -> bool:  # `elapsed >= interval`, reflected
        if self.stopping.is_set():
            return True
        return float(self) <= other  # type: ignore[operator]


class CancelCheck:
    """The library's `should_cancel`: reads the job at most every `poll_s` seconds.

    True when the user asked (`requested`), when the job is no longer ours (`lost`:
    taken over after a stale heartbeat), when this attempt has run longer than
    `max_job_seconds` (`over_time`), when no heartbeat got through for
    `heartbeat_loss_s` (`silenced`: the sweeper is about to give the job to another
    worker, which must be the only one writing), or at once when the worker shuts
    down. While the database is unreachable for less than that, it keeps its last
    answer: training goes on.
    """

    def __init__(self, runner: JobRunner, job_id: str, worker: str,
                 heartbeat: Heartbeat | None = None, attempt: int | None = None) -> None:
        self.runner, self.job_id, self.worker = runner, job_id, worker
        self.heartbeat, self.attempt = heartbeat, attempt
        self.requested = False
        self.lost = False
        self.silenced = False
        self.over_time = False
        self._began = time.monotonic()
        self._last_read = 0.0
        self._epochs_ended = 0
        self._shutdown_seen: tuple[float, int] | None = None

    def epoch_ended(self) -> None:
        """Called after each epoch's checkpoint and progress (see `_stopping`)."""
        self._epochs_ended += 1

    def _stopping(self, now: float) -> bool:
        """Whether a worker that is shutting down stops the job now. It lets the epoch in
        progress end first (it is then saved: `ShutdownAwareInterval`), for at most
        `shutdown_wait_s`, so that a planned restart loses no training; past that, or
        once an epoch has ended since the shutdown began, it stops at this batch."""
        if self._shutdown_seen is None:
            self._shutdown_seen = (now, self._epochs_ended)
            log.warning("job %s: worker stopping; the epoch in progress may run for up to "
                        "%g s (QUANTA_SHUTDOWN_WAIT_S) to be saved", self.job_id,
                        self.runner.settings.shutdown_wait_s)
        began, epochs = self._shutdown_seen
        return (self._epochs_ended > epochs
                or now - began >= self.runner.settings.shutdown_wait_s)

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.runner.shutting_down.is_set() and self._stopping(now):
            return True
        limit = self.runner.settings.max_job_seconds
        if limit and now - self._began > limit:
            self.over_time = True
            return True
        if self.heartbeat is not None:
            bound = self.runner.settings.heartbeat_loss_bound_s
            if self.heartbeat.silent_s > bound and not self.silenced:
                log.error("job %s: no heartbeat got through for %.0f s (more than "
                          "QUANTA_HEARTBEAT_LOSS_S=%g); stopping it, another worker will "
                          "take it over", self.job_id, self.heartbeat.silent_s, bound)
                self.silenced = True
            self.lost = self.lost or self.heartbeat.lost
            if self.silenced or self.lost:
                return True
        if now - self._last_read >= self.runner.settings.cancel_poll_s:
            self._last_read = now
            try:
                with self.runner.sessions() as session:
                    row = session.execute(
                        select(Job.cancel_requested, Job.status, Job.worker, Job.attempts)
                        .where(Job.id == self.job_id)).one_or_none()
            except RETRYABLE as exc:
                log.warning("job %s: cannot read its cancel flag (%s); training goes on",
                            self.job_id, type(exc).__name__)
                return self.requested or self.lost
            self.lost = row is None or row[1] != JobStatus.RUNNING or row[2] != self.worker \
                or (self.attempt is not None and row[3] != self.attempt)
            self.requested = bool(row is not None and row[0])
        return self.requested or self.lost


class JobRunner:
    """Runs jobs for one worker process; `shutting_down` is set when the worker stops."""

    def __init__(self, settings: Settings, *, celery: Celery | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        #: What the job hooks and the end of a study get (they never see the runner).
        self.context = JobContext(settings, self.sessions, celery)
        self.shutting_down = threading.Event()
        #: Where a job handed back to the queue is sent at once (else the sweeper sends it).
        self.celery = celery

    def redact(self, message: str) -> str:
        """`JobContext.redact`: no server folder in a message a client reads."""
        return self.context.redact(message)

    # -- claiming ---------------------------------------------------------------------
    def _claim(self, session: Session, job_id: str, worker: str) -> Job | Outcome:
        job = session.get(Job, job_id)
        if job is None:
            return Outcome("missing", f"no job {job_id} in the database")
        if job.kind == JobKind.STUDY:  # never run: its children are; worker.study_end ends it
            return Outcome("skipped", f"job {job_id} is a study")
        if job.status == JobStatus.RUNNING:
            # A copy of the message: drop it, unless the job's worker is lost (it is us,
            # restarted under the same name, or its heartbeat is stale).
            if job.worker != worker and not is_stale(session, job, self.settings):
                return Outcome("skipped", f"job {job_id} is running on {job.worker}")
            log.warning("job %s: taking over from lost worker %s", job_id, job.worker)
            status = recover(session, job, self.settings)
            session.commit()
            if status is not JobStatus.QUEUED:
                return Outcome(status.value, "lost worker")
        if job.status != JobStatus.QUEUED:
            return Outcome("skipped", f"job {job_id} is {job.status}")
        transition(session, job, JobStatus.RUNNING, worker=worker, result=None)
        session.commit()
        return job

    # -- running -------------------------------------------------------------------------
    def run(self, job_id: str, worker: str) -> Outcome:
        """Run job `job_id` if it is ours to run; returns what happened (for logs and tests)."""
        with self.sessions() as session:
            try:
                claimed = self._claim_retrying(session, job_id, worker)
            except ConcurrentChange as exc:
                return Outcome("skipped", str(exc))
            if isinstance(claimed, Outcome):
                log.info("job %s: %s (%s)", job_id, claimed.status, claimed.detail)
                return claimed
            job = claimed
            log.info("job %s: started (%s, attempt %d) on %s", job.id, job.kind, job.attempts,
                     worker)
            hooks.job_started(self.context, job.id)
            attempt, failed_attempts = job.attempts, job.failed_attempts
            stored_spec, study_id = dict(job.spec), job.parent_id  # for the tracker
            try:
                local = resolve_spec(session, self.settings, remote_spec(job.kind, job.spec))
                # the files again, just before the library loads them (Invalid: failed)
                check_spec_files(local, FileLimits.from_settings(self.settings))
            except ServiceError as exc:
                return self._end(job_id, worker, attempt, JobStatus.FAILED,
                                 {"error": exc.message})
            except Exception as exc:  # a stored spec that no longer parses
                return self._end(job_id, worker, attempt, JobStatus.FAILED,
                                 {"error": f"invalid job spec: {exc}"})
        files = attempts.AttemptFiles(self.settings, job_id, attempt)
        # The heartbeat beats from here: fetching an earlier attempt's checkpoints from a
        # bucket may take longer than the time after which the job would look abandoned.
        with Heartbeat(self.sessions, job_id, worker, self.settings.heartbeat_s,
                       attempt) as heartbeat:
            try:  # this attempt's own folders, resumed from an earlier attempt's checkpoints
                checkpoints.prepare(self.settings, job_id, attempt)
            except OSError as exc:
                status, fields = JobStatus.FAILED, {
                    "error": self._os_error(exc, "preparing the job's folders")}
            except Exception as exc:  # the store (a bucket) cannot be read: another try later
                log.error("job %s: cannot fetch its earlier attempt from the store (%s)",
                          job_id, exc)
                status, fields = JobStatus.QUEUED, {}
                if failed_attempts >= self.settings.max_attempts:
                    status, fields = JobStatus.FAILED, {"error": self.redact(
                        f"the store could not be read in {attempt} attempts: "
                        f"{type(exc).__name__}: {exc}")}
            else:
                status, fields = self._execute(
                    job_id, worker, job.kind, local, files.output,
                    checkpoint_dir=files.checkpoints, heartbeat=heartbeat, attempt=attempt,
                    files=files)
                self._log_datasets_kept(job_id)
                if status is JobStatus.SUCCEEDED:
                    self._track(job_id, job.kind, stored_spec, files.output, fields, study_id)
        return self._end(job_id, worker, attempt, status, fields, files)

    def _track(self, job_id: str, kind: str, spec: dict[str, Any], output: Path,
               fields: dict[str, Any], study_id: str | None) -> None:
        """The succeeded job's files to the tracker, if one is set (bounded; never fails
        the job: `worker.tracking`)."""
        result = fields.get("result") or {}
        folder = result.get("experiment_dir") or result.get("training_dir")
        if folder is not None:
            tracking.export_job(self.settings, job_id, kind, spec, output / folder, study_id)

    def _log_datasets_kept(self, job_id: str) -> None:
        """What the decoded datasets this process keeps between jobs weigh, against their
        bound: the memory a worker holds when idle."""
        from quanta.datasets import cache_usage

        kept, held = cache_usage()
        log.info("job %s: decoded datasets kept: %d, %d bytes (QUANTA_DATASET_CACHE_BYTES "
                 "= %d)", job_id, kept, held, self.settings.dataset_cache_bytes)

    def _claim_retrying(self, session: Session, job_id: str, worker: str) -> Job | Outcome:
        """`_claim`, retried while the database is unreachable (then DatabaseUnavailable:
        the task puts the message back in the queue)."""
        def claim() -> Job | Outcome:
            try:
                return self._claim(session, job_id, worker)
            except RETRYABLE:
                session.rollback()
                raise

        return retry_db(claim, what=f"job {job_id}: claim", budget_s=self.settings.db_retry_s)

    def _end(self, job_id: str, worker: str, attempt: int, status: JobStatus | None,
             fields: dict[str, Any], files: attempts.AttemptFiles | None = None) -> Outcome:
        """Record how this attempt ended, then promote its folder if it won.

        A final outcome is hashed (SHA-256 of every output, outside any transaction) and
        saved next to the outputs first, so that it survives an outage longer than
        `db_retry_s` (the sweeper, or this worker's next start, records it). Then one
        short transaction records it, retried for `db_retry_s` while the database is
        unreachable."""
        if status is None:  # the job is not ours any more, or we lost the database
            self._forget(job_id, attempt)
            return Outcome("lost", "this attempt no longer owns the job; nothing recorded")
        saved = attempts.SavedOutcome(attempt, worker, status, dict(fields))
        # The attempt's own (it remembers what its epochs already sent to a bucket).
        files = files or attempts.AttemptFiles(self.settings, job_id, attempt)
        if status is JobStatus.QUEUED and files.remote:  # handed back: the next host resumes
            try:
                files.push()
            except Exception as exc:  # it resumes from the last epoch that was sent
                log.warning("job %s: last checkpoint not sent to the store (%s)", job_id, exc)
        if status in TERMINAL:
            try:  # every output in the store, hashed; with a bucket, sent there first
                saved.artifacts = files.push(checkpoints=False)
            except Exception as exc:
                log.error("job %s: its files could not be stored in %s (%s)", job_id,
                          attempts.root(self.settings, job_id), exc)
                saved.status, saved.artifacts = JobStatus.FAILED, []
                saved.fields = {"error": "could not store the job's files: "
                                         f"{type(exc).__name__}: {self.redact(str(exc))}"}
            try:
                attempts.save_outcome(self.settings, job_id, saved)
            except Exception as exc:  # a full disk: the database is the only record left
                log.error("job %s: its outcome could not be saved in the store (%s); "
                          "recording it in the database only", job_id, exc)
        try:
            outcome = retry_db(lambda: self._finish(job_id, saved),
                               what=f"job {job_id}: recording its end",
                               budget_s=self.settings.db_retry_s)
            files.drop_local()  # with a bucket: the store has them (a hand-back's too)
            return outcome
        except DatabaseUnavailable as exc:
            log.error("%s. Its files and outcome stay on disk (%s); the sweeper records "
                      "them once the database is back and the job's heartbeat is stale",
                      exc, attempts.root(self.settings, job_id))
            return Outcome("unrecorded", str(exc))

    def _finish(self, job_id: str, saved: attempts.SavedOutcome) -> Outcome:
        """Record the attempt's end (or its hand-back to the queue) if the job is still
        this attempt's; then promote its outputs to the job's folder."""
        status, worker, attempt = saved.status, saved.worker, saved.attempt
        with self.sessions() as session:
            job = crud.get_job(session, job_id)
            if (status in TERMINAL and job.status == status and job.worker == worker
                    and job.attempts == attempt):  # a retried write's first try, or the sweeper
                self._promote(job_id, attempt)
                return Outcome(status.value, "already recorded")
            if (job.status != JobStatus.RUNNING or job.worker != worker
                    or job.attempts != attempt):
                log.error("job %s was taken from us (now %s on %s, attempt %d); leaving it",
                          job.id, job.status, job.worker, job.attempts)
                self._forget(job_id, attempt)
                return Outcome("lost")
            if status is JobStatus.QUEUED:
                saved.fields.setdefault("enqueued_at", None)
            try:
                attempts.record(session, job, saved)
            except ConcurrentChange:
                log.error("job %s changed under us; not marking it %s", job.id, status)
                session.rollback()
                self._forget(job_id, attempt)
                return Outcome("lost")
        if status in TERMINAL:
            self._promote(job_id, attempt)
        error = saved.fields.get("error") or ""
        log.info("job %s: %s%s", job_id, status.value, f" ({error})" if error else "")
        if status is JobStatus.QUEUED and self.celery is not None:
            try:
                with self.sessions() as again:
                    enqueue(self.celery, again, [job_id])
            except Exception:
                log.warning("job %s stays queued until the API re-sends it", job_id)
        hooks.job_ended(self.context, job_id, worker)
        return Outcome(status.value, error)

    def _promote(self, job_id: str, attempt: int) -> None:
        try:
            attempts.promote(self.settings, job_id, attempt)
        except Exception:  # recorded: the sweeper promotes it from its saved outcome
            log.exception("job %s: attempt %d recorded but not promoted yet", job_id, attempt)

    def _forget(self, job_id: str, attempt: int) -> None:
        """A losing attempt drops its folders once the job has ended (while it has not,
        a later attempt may be copying them to resume; its promotion drops them)."""
        try:
            with self.sessions() as session:
                ended = session.scalar(select(Job.status).where(Job.id == job_id)) in TERMINAL
        except RETRYABLE:
            return
        if ended:
            try:
                attempts.discard(self.settings, job_id, attempt)
            except Exception:  # the sweeper drops them with the job's other attempts
                log.warning("job %s: attempt %d's files stay until the sweeper drops them",
                            job_id, attempt, exc_info=True)

    @staticmethod
    def _os_error(exc: BaseException, doing: str) -> str:
        if _disk_full(exc):
            return f"disk full: no space left on the device while {doing}; free some and " \
                   "submit the job again"
        return f"internal error while {doing}: {type(exc).__name__}: {exc}"

    def _progress_hook(self, job_id: str, worker: str | None = None,
                       attempt: int | None = None,
                       files: attempts.AttemptFiles | None = None) -> Callable[[Any], None]:
        """Saves each epoch's progress (and its event) while the job is this attempt's;
        with a bucket as the store, first sends the epoch's checkpoint and outputs there,
        so that a worker on another host resumes from this epoch."""
        where = [Job.id == job_id, Job.status == JobStatus.RUNNING.value]
        if worker is not None:
            where.append(Job.worker == worker)
        if attempt is not None:
            where.append(Job.attempts == attempt)

        def on_epoch(event: Any) -> None:
            if files is not None and files.remote:
                try:
                    files.push()
                except Exception as exc:  # the next epoch sends it again
                    log.warning("job %s: checkpoint not sent to the store (%s)", job_id, exc)
            total = max(1, event.nb_of_runs * event.nb_of_epochs)
            progress = {
                "run": event.run, "nb_of_runs": event.nb_of_runs,
                "epoch": event.epoch, "nb_of_epochs": event.nb_of_epochs,
                "fraction": min(1.0, (event.run * event.nb_of_epochs + event.epoch) / total),
                "metrics": clean_metrics(event.metrics),
                "quantas": clean_quantas(event.quantas),
            }
            def write() -> None:
                with self.sessions() as session:
                    saved = session.execute(
                        update(Job).where(*where)
                        .values(progress=progress, updated_at=utcnow(), heartbeat_at=db_now())
                        .execution_options(synchronize_session=False)
                    ).rowcount  # type: ignore[attr-defined]
                    session.commit()
                    if saved:
                        hooks.epoch_event(session, job_id, progress)

            try:
                retry_db(write, what=f"progress of job {job_id}", budget_s=PROGRESS_RETRY_S)
            except DatabaseUnavailable as exc:  # the next epoch writes again
                log.warning("%s; not saved", exc)
            except Exception:  # progress is informative; never fail training for it
                log.warning("progress of job %s not saved", job_id, exc_info=True)

        return on_epoch

    def _execute(self, job_id: str, worker: str, kind: str, spec: Any, output: Path,
                 checkpoint_dir: Path | None = None, heartbeat: Heartbeat | None = None,
                 attempt: int | None = None, files: attempts.AttemptFiles | None = None,
                 ) -> tuple[JobStatus | None, dict[str, Any]]:
        """Run the library; map its outcome to (status, fields). Imports TensorFlow.

        With `checkpoint_dir`, the library saves each epoch there and resumes from it.
        None as the status: the job is not this attempt's any more (taken over, or its
        heartbeat was lost for `heartbeat_loss_s`); nothing is to be recorded."""
        from quanta import datasets as quanta_datasets
        from quanta.datasets import DatasetError
        from quanta.errors import Cancelled, QuantaError
        from quanta.source_training import train_source
        from quanta.transfer import TRACED_MODELS, run_transfer

        TRACED_MODELS.resize(self.settings.traced_models)
        quanta_datasets.limit_cache(self.settings.dataset_cache_bytes)

        cancel_check = CancelCheck(self, job_id, worker, heartbeat, attempt)
        progress = self._progress_hook(job_id, worker, attempt, files)

        def on_epoch(event: Any) -> None:
            try:
                progress(event)
            finally:
                cancel_check.epoch_ended()

        hooks: dict[str, Any] = {
            "data_dir": datasets.fetch_for(self.settings, spec),
            "on_epoch": on_epoch,
            "should_cancel": cancel_check,
            "checkpoint_dir": checkpoint_dir,
            "checkpoint_interval_s": ShutdownAwareInterval(
                self.settings.checkpoint_interval_s, self.shutting_down),
        }
        try:
            if kind == JobKind.SOURCE:
                source = train_source(spec, output, **hooks)
                result: dict[str, Any] = {
                    "training_dir": _relative(source.training_dir, output),
                    "test_metrics": clean_metrics(source.test_metrics),
                    "model_summary": write_model_summaries(output, {"": source.summary}),
                    "timings": {k: round(v, 3) for k, v in source.timings.items()},
                }
            elif kind == JobKind.SCORES:  # one inference pass: no epochs, no checkpoint
                result = scores_job.run(spec, output, hooks["data_dir"])
            else:
                transfer = run_transfer(spec, output, **hooks)
                result = {
                    "experiment_dir": _relative(transfer.experiment_dir, output),
                    "runs": [
                        {"run": r.run, "target_metrics": clean_metrics(r.target_metrics),
                         "source_metrics": clean_metrics(r.source_metrics),
                         "quantas": clean_quantas(r.quantas),
                         "witness_metrics": (None if r.witness_metrics is None
                                             else clean_metrics(r.witness_metrics)),
                         "transfer_gain": _clean_number(r.transfer_gain)}
                        for r in transfer.runs
                    ],
                    "model_summaries": write_model_summaries(output, transfer.summaries),
                    "timings": {k: round(v, 3) for k, v in transfer.timings.items()},
                }
                if transfer.runs:
                    job_plots.transfer_plot(spec, transfer.experiment_dir, output,
                                            spec.nb_of_runs)
        except Cancelled as exc:
            if cancel_check.lost:
                log.error("job %s was taken from us (another attempt owns it now); stopped, "
                          "nothing recorded", job_id)
            if cancel_check.lost or cancel_check.silenced:
                return None, {}
            if cancel_check.over_time and not cancel_check.requested:
                limit = self.settings.max_job_seconds
                log.warning("job %s: over its wall-time limit of %g s; stopped", job_id, limit)
                return JobStatus.FAILED, {"error": f"exceeded the wall-time limit of {limit:g} s "
                                                   "(QUANTA_MAX_JOB_SECONDS)"}
            if self.shutting_down.is_set() and not cancel_check.requested:
                log.warning("job %s: worker stopping; handing the job back to the queue", job_id)
                return JobStatus.QUEUED, {attempts.HANDED_BACK: True}
            return JobStatus.CANCELLED, {"result": {"message": str(exc)}}
        except (QuantaError, DatasetError) as exc:
            if _disk_full(exc):
                return JobStatus.FAILED, {"error": self.redact(self._os_error(
                    exc, f"writing the job's files ({exc})"))}
            return JobStatus.FAILED, {"error": self.redact(str(exc))}
        except Exception as exc:
            if _disk_full(exc):  # never retried: the next attempt would find no more room
                log.error("job %s: disk full (%s)", job_id, exc)
                return JobStatus.FAILED, {"error": self.redact(self._os_error(
                    exc, "writing the job's files"))}
            log.exception("job %s: internal error", job_id)
            message = f"internal error: {type(exc).__name__}: {exc}"
            return JobStatus.FAILED, {"error": self.redact(message)}
        return JobStatus.SUCCEEDED, {"result": result}


def _disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk or quota (h5py and
    Keras wrap the OSError, sometimes only keeping its message)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "errno = 28" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
