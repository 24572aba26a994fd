"""The service's plots beside a job's files: λ_s per epoch of a transfer job, and a
study's transferability and accuracy. A plot that cannot be drawn is logged, never
fatal: the job's outcome is decided before these run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quanta_jobs.models import Job
from quanta_jobs.studies import study_spec
from quanta_spec.file_names import STUDY_PLOTS, TRANSFER_PLOT, run_file_names, study_plot
from quanta_spec.specs import ALL_LAYERS_LABEL, layer_label
from worker.results import last_line, task_name

if TYPE_CHECKING:
    from quanta.summary import Summary

log = logging.getLogger(__name__)


def _title(spec: dict[str, Any]) -> str:
    return f"{task_name(spec['source_task'])} → {task_name(spec['target_task'])}"


def write_study_plots(output: Path, study: Job, summary: Summary,
                      baselines: dict[str, Any] | None = None) -> None:
    from quanta import plots

    spec = study_spec(study)
    if spec.until is not None:
        counts = sorted({len(data["runs"]) for data in summary.entries.values()})
        runs = (f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else f"{counts[0]}") + \
            f" runs (until 95% CI ±{spec.until.ci_halfwidth:g})"
    else:
        runs = f"{spec.nb_of_runs} run{'s' if spec.nb_of_runs > 1 else ''}"
    detail = f"{runs} × {spec.nb_of_target_epochs} epochs per layer"
    title = _title(study.spec)
    try:
        transferability, accuracy = STUDY_PLOTS
        plots.transferability(summary, output / study_plot(transferability),
                              f"Transferability, {title}\n{detail}", baselines)
        plots.accuracy(summary, output / study_plot(accuracy),
                       f"Test accuracy, {title}\n{detail}")
    except Exception:
        log.exception("study %s: plots not drawn", study.id)


def transfer_plot(spec: Any, experiment: Path, output: Path, nb_of_runs: int) -> None:
    """`plots/quantas.png` of a finished transfer job: λ_s per epoch of each run, and the
    target's test accuracy per epoch when the job tested every epoch."""
    try:
        from quanta import plots

        lines, tests = [], []
        for run in range(nb_of_runs):
            names = run_file_names(run, spec.layer_label)
            path = experiment / names["quantas"]
            if path.is_file():
                lines.append(last_line(path))
                # test_every_epoch: the target's test accuracy after each epoch, beside λ_s.
                per_epoch = experiment / names["target_testing_per_epoch"]
                if per_epoch.is_file():
                    tests.append(last_line(per_epoch))
        if not lines:
            return
        layer = ("all layers" if layer_label(spec.layer_to_transfer) == ALL_LAYERS_LABEL
                 else f"layer {spec.layer_to_transfer}")
        runs = f"{len(lines)} run{'s' if len(lines) > 1 else ''}"
        what = experiment.name.replace("_to_", " → ")
        seeded = f", seed {spec.seed}" if spec.seeded else ""
        title = rf"$\lambda_s$ per epoch, {what}, {layer} ({runs}{seeded})"
        plots.quantas_per_epoch(lines, output / TRANSFER_PLOT, title, tests=tests)
    except Exception:
        log.exception("quantas plot of %s not drawn", output.name)
