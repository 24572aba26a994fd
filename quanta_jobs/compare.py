"""Studies side by side: per layer, each study's final λ_s and curve, and their difference.

`GET /v1/studies/compare?ids=A,B,...` reads each study's final λ_s per run and mean λ_s
curve per (entry, QUANTA layer): from its `summary.json` once it succeeded, else (with
`partial`) from the results of its children that succeeded so far (no curve: curves are
made when a study ends). Each study after the first is compared with the first, layer by
layer: the difference of the means (that study minus the first) and the p-value of
Welch's t-test (`quanta_jobs.study_stats`), which does not assume the two studies' runs
share a variance. `spec_differences` names what else than the seed differs between their
specs: a significant difference then says nothing of chance alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from quanta_jobs.adaptive_runs import final_lambda_s
from quanta_jobs.job_state import JobKind, JobStatus
from quanta_jobs.models import Job
from quanta_jobs.study_stats import compare_runs
from quanta_spec import layer_label
from quanta_spec.specs import entry_order, ordered_layers
from quanta_spec.statistics import t_halfwidth


@dataclass
class StudyCurves:
    """One study's final λ_s per run and mean curve, by entry and QUANTA layer."""

    id: str
    status: str
    spec: dict[str, Any]
    complete: bool
    finals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def from_summary(study: Job, summary: dict[str, Any]) -> StudyCurves:
    """A succeeded study, from its `summary.json`."""
    out = StudyCurves(study.id, study.status, study.spec, bool(summary.get("complete", True)))
    for entry, data in summary.get("entries", {}).items():
        out.finals[entry] = {layer: [float(v) for v in stat.get("values", [])]
                             for layer, stat in data.get("lambda_s", {}).items()}
        out.curves[entry] = {layer: [float(v) for v in curve]
                             for layer, curve in data.get("lambda_s_per_epoch", {}).items()}
    return out


def from_children(session: Session, study: Job) -> StudyCurves:
    """A study not (or not successfully) ended, from its children that succeeded."""
    out = StudyCurves(study.id, study.status, study.spec, False)
    children = session.scalars(
        select(Job).where(Job.parent_id == study.id, Job.kind == JobKind.TRANSFER.value,
                          Job.status == JobStatus.SUCCEEDED.value)
        .order_by(Job.study_run, Job.created_at))
    for child in children:
        entry = out.finals.setdefault(layer_label(child.spec["layer_to_transfer"]), {})
        for layer, value in final_lambda_s(child).items():
            entry.setdefault(layer, []).append(value)
    return out


def _stat(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    mean = math.fsum(values) / n if n else None
    std = (math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
           if n > 1 and mean is not None else None)
    half = t_halfwidth(values)
    return {"n": n, "mean": mean, "std": std,
            "ci95": [mean - half, mean + half] if half is not None and mean is not None
            else None, "values": list(values)}


#: Spec fields that may differ between studies measuring the same thing: their runs are
#: other draws of the same experiment.
SAME_EXPERIMENT_FIELDS = frozenset({"seed"})


def spec_differences(first: dict[str, Any], other: dict[str, Any]) -> dict[str, list[Any]]:
    """The spec fields (other than the seed) whose values differ: `{field: [first's,
    other's]}`. A difference found between such studies may come from these, not from
    chance: the comparison says so beside its p-values."""
    names = sorted((set(first) | set(other)) - SAME_EXPERIMENT_FIELDS)
    return {name: [first.get(name), other.get(name)] for name in names
            if first.get(name) != other.get(name)}


def _order(key: str) -> tuple[int, int]:
    return entry_order(key)


def compare(studies: Sequence[StudyCurves]) -> dict[str, Any]:
    """The comparison body: the studies, then per entry and QUANTA layer each study's
    statistics and curve and each study's comparison with the first."""
    entries = sorted({e for s in studies for e in s.finals}, key=_order)
    first = studies[0]
    body: dict[str, Any] = {
        "studies": [{"id": s.id, "status": s.status, "complete": s.complete,
                     "source_task": s.spec.get("source_task"),
                     "target_task": s.spec.get("target_task"),
                     "nb_of_target_epochs": s.spec.get("nb_of_target_epochs"),
                     "runs": {e: max((len(v) for v in s.finals.get(e, {}).values()),
                                     default=0) for e in entries}}
                    for s in studies],
        "reference": first.id,
        "spec_differences": [{"a": first.id, "b": s.id,
                              "fields": spec_differences(first.spec, s.spec)}
                             for s in studies[1:]],
        "entries": {},
    }
    for entry in entries:
        layers = ordered_layers(k for s in studies for k in s.finals.get(entry, {}))
        cells = {}
        for layer in layers:
            values = {s.id: s.finals.get(entry, {}).get(layer, []) for s in studies}
            cells[layer] = {
                "studies": {s.id: {**_stat(values[s.id]),
                                   "curve": s.curves.get(entry, {}).get(layer)}
                            for s in studies},
                "comparisons": [{"a": first.id, "b": s.id,
                                 **compare_runs(values[first.id], values[s.id])}
                                for s in studies[1:]],
            }
        body["entries"][entry] = cells
    return body
