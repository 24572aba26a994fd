"""The worker's side of studies and live progress, and the plot of every transfer job.

`JobRunner` calls these around each job: `job_started` after it claims a job (the
job's `status` event; a study starts running with its first child), `epoch_event`
after each epoch, `job_ended` once the job's final status is committed (its event;
the study ends when its last child does), and `transfer_plot` before a transfer job's
files are recorded.

Ending a study computes its statistics once, whoever gets there: every worker that
ends a child of a study whose children have all ended tries to claim the study with
a compare-and-swap on its `worker` column; the one that wins writes `summary.json`,
`summary.csv` and the plots, and moves the study to its final status with
`api.job_state.transition(..., owner=itself)`. A claim whose worker died (stale
heartbeat) may be taken over; `finish_study` is also a Celery task, sent by the API
when a study's children all ended without anyone ending it.

Nothing here may fail a job: the job's own outcome is already decided when these run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from quanta_jobs import crud, job_events
from quanta_jobs.artifacts import scan
from quanta_jobs.job_state import TERMINAL, ConcurrentChange, JobStatus, transition
from quanta_jobs.models import Job
from quanta_jobs.studies import (
    KIND,
    claim_study_end,
    start_study,
    study_progress,
    study_spec,
    unfinished_children,
)
from quanta_spec import layer_label

if TYPE_CHECKING:
    from quanta.summary import Missing, RunRecord, Summary
    from worker.runner import JobRunner

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PLOTS = "plots"


# --- hooks of every job ----------------------------------------------------------------
def job_started(runner: JobRunner, job_id: str) -> None:
    """After a claim: the job's `running` event; its study, if queued, starts running."""
    try:
        with runner.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            job_events.record_status(session, job)
            if job.parent_id is not None and start_study(session, job.parent_id):
                study = session.get(Job, job.parent_id)
                if study is not None:
                    job_events.record_status(session, study)
    except Exception:
        log.warning("job %s: start not reported", job_id, exc_info=True)


def epoch_event(session: Session, job_id: str, progress: dict[str, Any]) -> None:
    """One `epoch` event with the progress a worker just saved (committed)."""
    job = session.get(Job, job_id)
    if job is not None:
        job_events.record(session, job, job_events.EPOCH, job_events.epoch_data(job, progress))


def job_ended(runner: JobRunner, job_id: str, worker: str) -> None:
    """After a job's status change was committed: its event, and the end of its study if
    it was the last child running."""
    try:
        with runner.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            extra = {}
            if job.parent_id is not None:
                study = session.get(Job, job.parent_id)
                if study is not None:
                    progress = study_progress(session, study)
                    extra["study"] = {"done": progress["done"], "total": progress["total"]}
            job_events.record_status(session, job, **extra)
            parent, ended = job.parent_id, job.status in TERMINAL
        if parent is not None and ended:
            finish_study(runner, parent, worker)
    except Exception:
        log.exception("job %s: end not reported", job_id)


# --- ending a study --------------------------------------------------------------------
def finish_study(runner: JobRunner, study_id: str, worker: str) -> str:
    """End the study if all its children ended and nobody else is ending it; idempotent.

    Returns what happened: `waiting` (children still to end), `skipped` (ended, or
    being ended elsewhere), or the study's final status.
    """
    me = f"{worker} (ending the study)"[:255]
    with runner.sessions() as session:
        study = session.get(Job, study_id)
        if study is None or study.kind != KIND or study.status in TERMINAL:
            return "skipped"
        if unfinished_children(session, study_id):
            return "waiting"
        study = claim_study_end(session, runner.settings, study_id, me)
        if study is None:
            return "skipped"
        try:
            if study.status == JobStatus.QUEUED:  # its children ended before it was seen running
                transition(session, study, JobStatus.RUNNING, worker=me)
                session.commit()
            if study.cancel_requested:
                status = JobStatus.CANCELLED
                fields: dict[str, Any] = {"result": {
                    "message": "cancelled", "progress": study_progress(session, study)}}
            else:
                status, fields = aggregate(runner, session, study)
            transition(session, study, status, owner=me, **fields)
            output = runner.settings.artifacts_dir / study.id
            crud.replace_artifacts(session, study.id, scan(output))
            session.commit()
        except ConcurrentChange:
            log.warning("study %s changed while being ended (cancelled?); leaving it", study_id)
            return "skipped"
        except Exception as exc:  # a bug: end the study failed rather than leave it hanging
            log.exception("study %s: ending it failed", study_id)
            session.rollback()
            session.refresh(study)
            if study.status not in TERMINAL:
                transition(session, study, JobStatus.FAILED, owner=me,
                           error=runner.redact(f"internal error: {type(exc).__name__}: {exc}"))
                session.commit()
            status = JobStatus.FAILED
        log.info("study %s: %s", study_id, status.value)
        job_events.record_status(session, study)
        return status.value


def aggregate(runner: JobRunner, session: Session, study: Job
              ) -> tuple[JobStatus, dict[str, Any]]:
    """Statistics and plots of a study whose children all ended: (final status, fields)."""
    from quanta.summary import Missing, summarise

    children = list(session.scalars(select(Job).where(Job.parent_id == study.id)
                                    .order_by(Job.study_run, Job.created_at)))
    records: list[RunRecord] = []
    missing: list[Missing] = []
    missing_out: list[dict[str, Any]] = []
    for child in children:
        entry = layer_label(int(child.spec["layer_to_transfer"]))
        run = int(child.study_run or 0)
        reason = None
        if child.status == JobStatus.SUCCEEDED:
            try:
                records.append(read_record(runner.settings.artifacts_dir / child.id, child,
                                           entry, run))
            except (OSError, ValueError, KeyError, IndexError) as exc:
                reason = runner.redact(f"its results cannot be read: {exc}")
        else:
            reason = child.error or (child.result or {}).get("message") or child.status
        if reason is not None:
            missing.append(Missing(entry, run, f"job {child.id} {child.status}: {reason}"))
            missing_out.append({"job": child.id, "layer": entry, "run": run,
                                "status": child.status, "error": reason})
    progress = study_progress(session, study)
    if not records:
        first = missing_out[0]["error"] if missing_out else "no child"
        return JobStatus.FAILED, {
            "error": f"no child job succeeded ({len(missing_out)} of {len(children)} failed "
                     f"or were cancelled); first: {first}",
            "result": {"missing": missing_out, "progress": progress},
        }
    summary = summarise(records, missing)
    output = runner.settings.artifacts_dir / study.id
    write_summary(output, study, summary, children)
    write_study_plots(output, study, summary)
    return JobStatus.SUCCEEDED, {"result": {
        "children": len(children),
        "succeeded": len(records),
        "missing": missing_out,
        "complete": not missing_out,
        "entries": compact_entries(summary),
        "summary": f"/v1/jobs/{study.id}/summary",
        "plots": [f"/v1/jobs/{study.id}/plots/{name}.png"
                  for name in ("transferability", "accuracy")
                  if (output / PLOTS / f"{name}.png").is_file()],
        "progress": progress,
    }}


def _last_line(path: Path) -> dict[str, Any]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path.name} is empty")
    return json.loads(lines[-1])


def read_record(folder: Path, child: Job, entry: str, run: int) -> RunRecord:
    """A child's run as the statistics want it, read from its JSONL files."""
    from quanta.export import experiment_dir, run_file_names
    from quanta.summary import RunRecord

    spec = child.spec
    experiment = folder / (child.result or {}).get("experiment_dir", "")
    if not (child.result or {}).get("experiment_dir"):
        experiment = experiment_dir(folder, _task_name(spec["source_task"]),
                                    _task_name(spec["target_task"]))
    names = run_file_names(0, entry)  # a child has one run, its run 0
    witness = experiment / names["witness_testing"]
    return RunRecord(
        entry=entry,
        run=run,
        quantas=_last_line(experiment / names["quantas"]),
        target_metrics=_last_line(experiment / names["target_testing"]),
        witness_metrics=_last_line(witness) if spec.get("witness") else None,
    )


def _task_name(task: Any) -> str:
    """A task as it appears in titles and folder names: its name, or `upload ID`."""
    if isinstance(task, dict):
        return f"upload-{task.get('upload', '?')[:8]}"
    return str(task)


def compact_entries(summary: Summary) -> dict[str, Any]:
    """Per entry, the numbers one reads first (the full detail is in summary.json)."""
    out: dict[str, Any] = {}
    for entry, data in summary.entries.items():
        def brief(stat: dict[str, Any] | None) -> dict[str, Any] | None:
            if not stat or not stat["n"]:
                return None
            return {"mean": stat["mean"], "std": stat["std"], "ci95": stat["ci95"]}

        out[entry] = {
            "runs": len(data["runs"]),
            "lambda_s": {layer: brief(stat) for layer, stat in data["lambda_s"].items()},
            "target_accuracy": brief(data["target_accuracy"]),
            "witness_accuracy": brief(data["witness_accuracy"]),
            "transfer_gain": brief(data["transfer_gain"]),
        }
    return out


def write_summary(output: Path, study: Job, summary: Summary, children: list[Job]) -> None:
    from quanta.export import replace_bytes

    body = {
        "study": study.id,
        "spec": study.spec,
        **summary.as_dict(),
        "children": [{"job": c.id, "layer": layer_label(int(c.spec["layer_to_transfer"])),
                      "run": c.study_run, "seed": c.spec.get("seed"), "status": c.status}
                     for c in children],
    }
    replace_bytes(output / SUMMARY_JSON, (json.dumps(body, indent=1) + "\n").encode())
    replace_bytes(output / SUMMARY_CSV, summary.as_csv().encode())


def _title(spec: dict[str, Any]) -> str:
    return f"{_task_name(spec['source_task'])} → {_task_name(spec['target_task'])}"


def write_study_plots(output: Path, study: Job, summary: Summary) -> None:
    from quanta import plots

    spec = study_spec(study)
    runs = f"{spec.nb_of_runs} run{'s' if spec.nb_of_runs > 1 else ''}"
    detail = f"{runs} × {spec.nb_of_target_epochs} epochs per layer"
    title = _title(study.spec)
    try:
        plots.transferability(summary, output / PLOTS / "transferability.png",
                              f"Transferability, {title}\n{detail}")
        plots.accuracy(summary, output / PLOTS / "accuracy.png",
                       f"Test accuracy, {title}\n{detail}")
    except Exception:
        log.exception("study %s: plots not drawn", study.id)


def transfer_plot(spec: Any, experiment: Path, output: Path, nb_of_runs: int) -> None:
    """`plots/quantas.png` of a finished transfer job: λ_s per epoch of each run."""
    try:
        from quanta import plots
        from quanta.export import run_file_names

        lines = []
        for run in range(nb_of_runs):
            path = experiment / run_file_names(run, spec.layer_label)["quantas"]
            if path.is_file():
                lines.append(_last_line(path))
        if not lines:
            return
        layer = "all layers" if spec.layer_to_transfer < 0 else f"layer {spec.layer_to_transfer}"
        runs = f"{len(lines)} run{'s' if len(lines) > 1 else ''}"
        title = (f"λ_s per epoch, {experiment.name.replace('_to_', ' → ')}, {layer} "
                 f"({runs}, seed {spec.seed})" if spec.seeded else
                 f"λ_s per epoch, {experiment.name.replace('_to_', ' → ')}, {layer} ({runs})")
        plots.quantas_per_epoch(lines, output / PLOTS / "quantas.png", title)
    except Exception:
        log.exception("quantas plot of %s not drawn", output.name)
