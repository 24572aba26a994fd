"""Jobs exported to the researchers' tracker (MLflow) when they succeed.

With `QUANTA_MLFLOW_TRACKING_URI` set, a transfer or source job that succeeds becomes
one MLflow run (`quanta.mlflow_export`) named after the job, tagged with its id (and
its study's). A study's end makes the study's run, with the summary's per-layer figures,
and nests its jobs' runs under it (found by their `quanta.study` tag). Every export is
bounded by `QUANTA_MLFLOW_TIMEOUT_S` and never changes the job's outcome.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quanta_jobs.settings import Settings

log = logging.getLogger(__name__)


def export_job(settings: Settings, job_id: str, kind: str, spec: dict[str, Any],
               folder: Path, study_id: str | None) -> str | None:
    """The succeeded job's files (`folder`: its experiment or training folder) as a run."""
    if not settings.mlflow_tracking_uri:
        return None
    from quanta import mlflow_export

    tags = {"quanta.job": job_id, "quanta.kind": kind}
    if study_id:
        tags["quanta.study"] = study_id
    return mlflow_export.export_bounded(
        lambda: mlflow_export.export_run(
            settings.mlflow_tracking_uri or "", folder, spec, run_name=f"{kind} {job_id[:8]}",
            experiment=settings.mlflow_experiment, tags=tags),
        settings.mlflow_timeout_s, f"job {job_id}")


def export_study(settings: Settings, study_id: str, spec: dict[str, Any], folder: Path,
                 summary: dict[str, Any]) -> str | None:
    """The study's run (its summary's figures, its files) and its jobs' runs under it."""
    if not settings.mlflow_tracking_uri:
        return None
    from quanta import mlflow_export

    def export() -> str:
        uri = settings.mlflow_tracking_uri or ""
        run_id = mlflow_export.export_run(
            uri, folder, spec, run_name=f"study {study_id[:8]}",
            experiment=settings.mlflow_experiment,
            tags={"quanta.job": study_id, "quanta.kind": "study"},
            extra_metrics=mlflow_export.summary_metrics(summary))
        mlflow_export.nest_study_runs(uri, settings.mlflow_experiment, study_id, run_id)
        return run_id

    return mlflow_export.export_bounded(export, settings.mlflow_timeout_s, f"study {study_id}")
