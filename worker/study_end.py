"""The end of a study: its statistics, plots and final status, computed exactly once.

Every worker that ends a child of a study whose children have all ended tries to
claim the study (`quanta_jobs.studies.claim_study_end`, a compare-and-swap on its
`worker` column); the one that wins writes `summary.json`, `summary.csv` and the
plots, and moves the study to its final status with
`quanta_jobs.job_state.transition(..., owner=itself)`. A claim whose worker died
(stale heartbeat) may be taken over; `finish_study` is also a Celery task, sent by
the API's sweeper when a study's children all ended without anyone ending it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from quanta_jobs import adaptive_runs, attempts, crud, job_events
from quanta_jobs.crud import ArtifactInfo
from quanta_jobs.job_state import TERMINAL, ConcurrentChange, JobStatus, transition
from quanta_jobs.models import Job
from quanta_jobs.queue import enqueue
from quanta_jobs.refs import resolve_spec
from quanta_jobs.store import Mirror, StoreError, cache_from_settings, work_dir
from quanta_jobs.studies import (
    KIND,
    claim_study_end,
    study_progress,
    study_spec,
    unfinished_children,
)
from quanta_jobs.study_stats import score_correlations
from quanta_spec import layer_label
from quanta_spec.file_names import STUDY_PLOTS, SUMMARY_CSV, SUMMARY_JSON, study_plot
from quanta_spec.files import atomic_write
from quanta_spec.scores import BASELINE_SCORES_JSON, study_scores_spec
from worker import datasets, tracking
from worker.context import JobContext
from worker.job_plots import write_study_plots
from worker.results import read_record

if TYPE_CHECKING:
    from quanta.summary import Missing, RunRecord, Summary

log = logging.getLogger(__name__)


def finish_study(context: JobContext, study_id: str, worker: str) -> str:
    """End the study if all its children ended and nobody else is ending it; idempotent.

    Returns what happened: `waiting` (children still to end), `skipped` (ended, or
    being ended elsewhere), or the study's final status.
    """
    me = f"{worker} (ending the study)"[:255]
    try:
        if add_runs(context, study_id):
            return "waiting"
    except Exception:  # the sweeper asks again; a study is not ended on a guess
        log.exception("study %s: its next runs could not be decided", study_id)
        return "waiting"
    with context.sessions() as session:
        study = session.get(Job, study_id)
        if study is None or study.kind != KIND or study.status in TERMINAL:
            return "skipped"
        if unfinished_children(session, study_id):
            return "waiting"
        study = claim_study_end(session, context.settings, study_id, me)
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
                status, fields = aggregate(context, session, study)
            transition(session, study, status, owner=me, **fields)
            crud.replace_artifacts(session, study.id, _publish(context, study.id))
            session.commit()
            _drop_local(context, study.id)
        except ConcurrentChange:
            log.warning("study %s changed while being ended (cancelled?); leaving it", study_id)
            return "skipped"
        except Exception as exc:  # a bug: end the study failed rather than leave it hanging
            log.exception("study %s: ending it failed", study_id)
            session.rollback()
            session.refresh(study)
            if study.status not in TERMINAL:
                transition(session, study, JobStatus.FAILED, owner=me,
                           error=context.redact(f"internal error: {type(exc).__name__}: {exc}"))
                session.commit()
            status = JobStatus.FAILED
        log.info("study %s: %s", study_id, status.value)
        job_events.record_status(session, study)
        return status.value


def add_runs(context: JobContext, study_id: str) -> list[str]:
    """The runs a study with `until` needs next (`quanta_jobs.adaptive_runs`), created and sent."""
    with context.sessions() as session:
        ids = adaptive_runs.extend_study(session, study_id)
        if ids and context.celery is not None:
            enqueue(context.celery, session, ids)  # else the sweeper sends them
    return ids


def aggregate(context: JobContext, session: Session, study: Job
              ) -> tuple[JobStatus, dict[str, Any]]:
    """Statistics and plots of a study whose children all ended: (final status, fields)."""
    from quanta.summary import Missing, summarise

    children = list(session.scalars(select(Job).where(Job.parent_id == study.id)
                                    .order_by(Job.study_run, Job.created_at)))
    records: list[RunRecord] = []
    missing: list[Missing] = []
    missing_out: list[dict[str, Any]] = []
    for child in children:
        entry = layer_label(child.spec["layer_to_transfer"])
        run = int(child.study_run or 0)
        reason = None
        if child.status == JobStatus.SUCCEEDED:
            try:
                records.append(read_record(_child_files(context, session, child), child,
                                           entry, run))
            except (OSError, ValueError, KeyError, IndexError, StoreError) as exc:
                reason = context.redact(f"its results cannot be read: {exc}")
        else:
            reason = child.error or (child.result or {}).get("message") or child.status
        if reason is not None:
            missing.append(Missing(entry, run, f"job {child.id} {child.status}: {reason}"))
            missing_out.append({"job": child.id, "layer": entry, "run": run,
                                "status": child.status, "error": reason})
    records = _shared_witnesses(records)
    progress = study_progress(session, study)
    if not records:
        first = missing_out[0]["error"] if missing_out else "no child"
        return JobStatus.FAILED, {
            "error": f"no child job succeeded ({len(missing_out)} of {len(children)} failed "
                     f"or were cancelled); first: {first}",
            "result": {"missing": missing_out, "progress": progress},
        }
    summary = summarise(records, missing)
    output = _output(context, study.id)
    spec = study_spec(study)
    stopping = adaptive_runs.stopping(spec, children)
    baselines = study_baselines(context, session, study, summary) if spec.baselines else None
    write_summary(output, study, summary, children, stopping=stopping, baselines=baselines)
    write_study_plots(output, study, summary, baselines)
    tracking.export_study(context.settings, study.id, dict(study.spec), output,
                          json.loads((output / SUMMARY_JSON).read_text()))
    return JobStatus.SUCCEEDED, {"result": {
        "children": len(children),
        "succeeded": len(records),
        "missing": missing_out,
        "complete": not missing_out,
        "entries": compact_entries(summary),
        **({"stopping": stopping} if stopping is not None else {}),
        **({"baselines": {k: baselines[k] for k in ("correlations", "error") if k in baselines}}
           if baselines is not None else {}),
        "summary": f"/v1/jobs/{study.id}/summary",
        "plots": [f"/v1/jobs/{study.id}/{study_plot(name)}"
                  for name in STUDY_PLOTS if (output / study_plot(name)).is_file()],
        "progress": progress,
    }}


def _shared_witnesses(records: list[RunRecord]) -> list[RunRecord]:
    """Each run's witness, trained once by one layer's job (`witness_layer`), given to
    every layer of that run; a run whose witness job failed has none."""
    trained = {r.run: r.witness_metrics for r in records if r.witness_metrics is not None}
    return [r if r.witness_metrics is not None or r.run not in trained
            else dataclasses.replace(r, witness_metrics=trained[r.run]) for r in records]


def _output(context: JobContext, study_id: str) -> Path:
    """The local folder the study's files are written in (`_publish` stores them)."""
    return work_dir(context.settings, "artifacts", study_id)


def _publish(context: JobContext, study_id: str) -> list[ArtifactInfo]:
    """The study's files in the store (sent there from the work folder when the store is
    a bucket), as its artifact index."""
    mirror = Mirror(attempts.artifacts_store(context.settings), study_id,
                    _output(context, study_id))
    strip = len(study_id) + 1
    return [ArtifactInfo(info.key[strip:], info.size, info.sha256 or "")
            for info in mirror.push()]


def _drop_local(context: JobContext, study_id: str) -> None:
    folder = _output(context, study_id)
    if attempts.artifacts_store(context.settings).local_dir(study_id) != folder:
        shutil.rmtree(folder, ignore_errors=True)


def _child_files(context: JobContext, session: Session, child: Job) -> Callable[[str], Path]:
    """A child job's recorded files as local copies, fetched from the store on demand and
    checked against the SHA-256 its artifact index holds."""
    cache = cache_from_settings(context.settings, "artifacts")
    digests = {a.path: a.sha256 for a in crud.list_artifacts(session, child.id)}

    def fetch(path: str) -> Path:
        key = attempts.locate(context.settings, child.id, child.attempts, path)
        if key is None or path not in digests:
            raise FileNotFoundError(f"job {child.id} has no file {path}")
        return cache.path(key, digests[path])

    return fetch


def _mean_lambda_s(summary: Summary, entry: str | None = None) -> dict[str, float]:
    """Mean final λ_s by layer: of each layer transferred alone, or (`entry` "all") of
    each of the seven layers transferred at once."""
    if entry is not None:
        data = summary.entries.get(entry, {}).get("lambda_s", {})
        return {k: stat["mean"] for k, stat in data.items() if stat["n"]}
    return {k: data["lambda_s"][k]["mean"] for k, data in summary.entries.items()
            if k != "all" and data["lambda_s"].get(k, {}).get("n")}


def study_baselines(context: JobContext, session: Session, study: Job, summary: Summary
                    ) -> dict[str, Any]:
    """The baseline scores of the study's source per layer (`baseline_scores.json` in its
    folder), beside the mean λ_s, with each score's rank correlations with λ_s across
    layers. A failure is reported in place of the scores: the runs are what the study
    measured, and they stand without them."""
    from quanta.source_scores import score_source

    try:
        local = resolve_spec(session, context.settings, study_scores_spec(study_spec(study)))
        scored = score_source(local, _output(context, study.id),  # type: ignore[arg-type]
                              data_dir=datasets.fetch_for(context.settings, local))
    except Exception as exc:
        log.warning("study %s: baseline scores not computed", study.id, exc_info=True)
        return {"error": context.redact(f"baseline scores not computed: {exc}")}
    layers = {k: {name: v for name, v in values.items() if name != "dims"}
              for k, values in scored.scores["layers"].items()}
    lambdas = _mean_lambda_s(summary)
    out: dict[str, Any] = {
        "file": BASELINE_SCORES_JSON,
        "nb_of_samples": scored.scores["nb_of_samples"],
        "layers": {k: {"lambda_s": lambdas.get(k), **scored.scores["layers"][k]}
                   for k in layers},
        "source": scored.scores["source"],
        "correlations": score_correlations(layers, lambdas),
    }
    if "all" in summary.entries:
        out["correlations_all_at_once"] = score_correlations(
            layers, _mean_lambda_s(summary, "all"))
    return out


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
            "equal_run_lengths": data["equal_run_lengths"],
        }
    return out


def write_summary(output: Path, study: Job, summary: Summary, children: list[Job], *,
                  stopping: dict[str, Any] | None = None,
                  baselines: dict[str, Any] | None = None) -> None:
    body = {
        "study": study.id,
        "spec": study.spec,
        **summary.as_dict(),
        **({"stopping": stopping} if stopping is not None else {}),
        **({"baselines": baselines} if baselines is not None else {}),
        "children": [{"job": c.id, "layer": layer_label(c.spec["layer_to_transfer"]),
                      "run": c.study_run, "seed": c.spec.get("seed"), "status": c.status,
                      "trains_witness": bool(c.spec.get("witness"))}
                     for c in children],
        # Where each run's witness was trained and recorded (the others refer to it).
        "witnesses": {str(c.study_run): c.id for c in children if c.spec.get("witness")},
    }
    atomic_write(output / SUMMARY_JSON, (json.dumps(body, indent=1) + "\n").encode())
    scores = {k: {name: v for name, v in values.items() if name not in ("dims", "lambda_s")}
              for k, values in (baselines or {}).get("layers", {}).items()}
    atomic_write(output / SUMMARY_CSV, summary.as_csv(scores).encode())
