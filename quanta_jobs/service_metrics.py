"""What the service holds, read from the database for an operator's monitoring.

The API process exposes it as Prometheus metrics (`api.metrics`); the database is the
source of truth (the workers run elsewhere), so every figure is read at scrape time:
jobs by kind and status, live workers, uploads and stored bytes, and over the jobs that
ended, their durations and attempts, bucketed by one query each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from quanta_jobs.job_state import TERMINAL
from quanta_jobs.models import Artifact, Job, Upload
from quanta_jobs.workers import alive

#: Upper bounds (seconds) of the job-duration buckets: a minute to a day.
DURATION_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, math.inf)
#: Upper bounds of the attempts buckets.
ATTEMPT_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, math.inf)


@dataclass
class Histogram:
    """Cumulative counts per upper bound, the sum and the count (Prometheus' shape)."""

    buckets: list[tuple[float, int]] = field(default_factory=list)
    total: float = 0.0
    count: int = 0


@dataclass
class Snapshot:
    jobs: dict[tuple[str, str], int]  # (kind, status) -> count
    workers_alive: int
    uploads: int
    upload_bytes: int
    artifact_bytes: int
    durations: dict[str, Histogram]  # kind -> seconds from start to end
    attempts: dict[str, Histogram]  # kind -> attempts of the jobs that ended


def _seconds(session: Session, start: Any, end: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _histograms(session: Session, value: Any, bounds: tuple[float, ...],
                *conditions: Any) -> dict[str, Histogram]:
    columns = [func.sum(case((value <= bound, 1), else_=0)) for bound in bounds[:-1]]
    rows = session.execute(
        select(Job.kind, func.count(), func.coalesce(func.sum(value), 0), *columns)
        .where(Job.status.in_([s.value for s in TERMINAL]), *conditions)
        .group_by(Job.kind)).all()
    out = {}
    for kind, count, total, *below in rows:
        cumulative = [(bound, int(n or 0)) for bound, n in zip(bounds, below, strict=False)]
        out[kind] = Histogram([*cumulative, (math.inf, int(count))], float(total), int(count))
    return out


def snapshot(session: Session, heartbeat_s: float) -> Snapshot:
    jobs = {(kind, status): int(n) for kind, status, n in session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))}
    uploads, upload_bytes = session.execute(
        select(func.count(), func.coalesce(func.sum(Upload.size), 0))).one()
    artifact_bytes = session.scalar(select(func.coalesce(func.sum(Artifact.size), 0)))
    seconds = _seconds(session, Job.started_at, Job.finished_at)
    return Snapshot(
        jobs=jobs, workers_alive=alive(session, heartbeat_s), uploads=int(uploads),
        upload_bytes=int(upload_bytes), artifact_bytes=int(artifact_bytes or 0),
        durations=_histograms(session, seconds, DURATION_BUCKETS,
                              Job.started_at.is_not(None), Job.finished_at.is_not(None)),
        attempts=_histograms(session, Job.attempts, ATTEMPT_BUCKETS),
    )
