"""The `until` stopping rule of a study: which layers get another run, decided in the core.

A study with `until` starts `min_runs` runs of every layer. When a child ends (and
again before the study is ended), `extend_study` looks at each layer's ended runs:

- a layer whose ended runs hold a failed or cancelled one gets no more runs
  (`failed_runs`: the rule cannot judge a layer whose prefix has a hole);
- a layer with at least `min_runs` succeeded runs whose 95% confidence interval of the
  mean final λ_s is at most `ci_halfwidth` on each side stops (`ci_reached`); for the
  all-at-once entry, the widest of its seven layers' intervals counts;
- a layer with `max_runs` runs started gets no more (`max_runs`);
- otherwise, once its first `min_runs` runs have ended, it gets runs so that
  `min_runs` of them are queued or running: each run that ends is replaced by the next.

Run r is seeded with seed + r (`RemoteStudySpec.child_spec`), so the runs are the first
ones of the fixed study. Runs already under way when a layer's interval is reached still
end and count. The decision is serialised per study: its first statement updates the
study's row, which holds that row's lock (PostgreSQL) or the database's write lock
(SQLite) until the commit, so two children ending at once never add the same run twice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from quanta_jobs.job_state import JobKind, JobStatus
from quanta_jobs.models import Job, utcnow
from quanta_spec import RemoteStudySpec, layer_label
from quanta_spec.specs import layer_value
from quanta_spec.statistics import t_halfwidth
from quanta_spec.stopping import StopReason, UntilRule

log = logging.getLogger(__name__)
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass
class LayerRuns:
    """What is known of one layer's runs in a study."""

    layer: int
    started: set[int] = field(default_factory=set)
    active: int = 0
    ended: int = 0
    failed: int = 0
    #: Final λ_s of each succeeded run, by QUANTA layer ("0".."6").
    finals: list[dict[str, float]] = field(default_factory=list)

    @property
    def ci_halfwidth(self) -> float | None:
        """The widest 95% CI half-width of the mean final λ_s over its QUANTA layers."""
        if not self.finals:
            return None
        widths = [t_halfwidth([f[k] for f in self.finals if k in f])
                  for k in sorted({k for f in self.finals for k in f})]
        return None if not widths or None in widths else max(w for w in widths if w is not None)


def final_lambda_s(child: Job) -> dict[str, float]:
    """The final λ_s of a succeeded child's one run, by QUANTA layer (as its result has
    them; a non-finite value was stored as null and is left out)."""
    runs = (child.result or {}).get("runs") or []
    quantas = runs[0].get("quantas", {}) if runs else {}
    out = {}
    for layer, values in quantas.items():
        value = (values or {}).get("source")
        if isinstance(value, int | float) and math.isfinite(value):
            out[str(layer)] = float(value)
    return out


def layer_runs(spec: RemoteStudySpec, children: list[Job]) -> dict[int | str, LayerRuns]:
    """Each study layer's runs, from its children."""
    layers = {k: LayerRuns(k) for k in spec.study_layers}
    for child in children:
        if child.kind != JobKind.TRANSFER:
            continue
        state = layers.get(layer_value(child.spec["layer_to_transfer"]))
        if state is None:
            continue
        state.started.add(int(child.study_run or 0))
        if child.status in ACTIVE:
            state.active += 1
            continue
        state.ended += 1
        if child.status == JobStatus.SUCCEEDED:
            finals = final_lambda_s(child)
            if finals:
                state.finals.append(finals)
        else:
            state.failed += 1
    return layers


def verdict(rule: UntilRule, runs: LayerRuns) -> tuple[StopReason | None, int]:
    """(why the layer gets no more runs, or None; how many runs to add now)."""
    if runs.failed:
        return "failed_runs", 0
    width = runs.ci_halfwidth
    if len(runs.finals) >= rule.min_runs and width is not None and width <= rule.ci_halfwidth:
        return "ci_reached", 0
    if len(runs.started) >= rule.max_runs:
        return "max_runs", 0
    if runs.ended < rule.min_runs:  # the first runs are still under way
        return None, 0
    return None, max(0, min(rule.min_runs - runs.active, rule.max_runs - len(runs.started)))


def _lock(session: Session, study_id: str) -> bool:
    """Take the study's lock for this transaction; False if it ended or is cancelled."""
    taken = session.execute(
        update(Job).where(Job.id == study_id, Job.kind == JobKind.STUDY.value,
                          Job.status.in_(ACTIVE),
                          Job.cancel_requested.is_(False))
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return taken == 1


def extend_study(session: Session, study_id: str) -> list[str]:
    """Add the runs the `until` rule asks for (committed); returns the new children's ids,
    to enqueue. A study without `until`, ended or cancelled gets none.

    Give it a session without uncommitted changes: on SQLite the lock must be the first
    write of the transaction."""
    if not _lock(session, study_id):
        session.rollback()
        return []
    study = session.get(Job, study_id)
    assert study is not None
    session.refresh(study)
    spec = RemoteStudySpec.model_validate(study.spec)
    if spec.until is None:
        session.rollback()
        return []
    children = list(session.scalars(select(Job).where(Job.parent_id == study_id)))
    added = []
    for layer, runs in layer_runs(spec, children).items():
        _, more = verdict(spec.until, runs)
        start = max(runs.started, default=-1) + 1
        for run in range(start, start + more):
            child = Job(kind=JobKind.TRANSFER.value, status=JobStatus.QUEUED.value,
                        spec=spec.child_spec(layer, run).model_dump(mode="json"),
                        parent_id=study_id, study_run=run, owner=study.owner)
            session.add(child)
            added.append(child)
    session.flush()
    ids = [child.id for child in added]
    session.commit()
    if ids:
        log.info("study %s: %d more runs (until)", study_id, len(ids))
    return ids


def stopping(spec: RemoteStudySpec, children: list[Job]) -> dict[str, dict[str, Any]] | None:
    """Per entry, why it stopped and after how many runs (for the summary); None without
    `until`."""
    if spec.until is None:
        return None
    out = {}
    for layer, runs in layer_runs(spec, children).items():
        reason, _ = verdict(spec.until, runs)
        out[layer_label(layer)] = {
            "reason": reason, "runs": len(runs.started), "succeeded": len(runs.finals),
            "ci_halfwidth": runs.ci_halfwidth, "target": spec.until.ci_halfwidth,
        }
    return out
