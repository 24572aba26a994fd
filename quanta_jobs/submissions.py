"""What a submission checks, and the order it checks it in: one function for the API's
routes, the dashboard's forms and the client, whichever reaches the service.

`submit` replays an `Idempotency-Key` already used by the same request, resolves the
spec's references, bounds the work it plans (`quotas.check_work`), then, under the
owner's lock (`owner_lock`), counts the owner's queued jobs and stored bytes and inserts
the job (a study with its jobs) in the same transaction: 40 submissions at once cannot
all see room under the queued-jobs cap. The job is sent to the broker after the commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quanta_jobs import crud, job_events, quotas, source_network, studies
from quanta_jobs.errors import Invalid, TooManyRequests
from quanta_jobs.models import Job
from quanta_jobs.owner_lock import lock_owner
from quanta_jobs.queue import enqueue
from quanta_jobs.refs import resolve_spec, study_with_layers
from quanta_jobs.settings import Settings

log = logging.getLogger(__name__)

#: The header that names a request, and where a 422 about it points.
HEADER = "Idempotency-Key"
LOC = ("header", HEADER)


def reused(key: str, what: str) -> Invalid:
    """The error for a key already used by a different request."""
    return Invalid(f"Idempotency-Key '{key}' was already used for a different {what}; "
                   "use a new key for a new request", loc=LOC)


@dataclass
class Submitted:
    job: Job
    replayed: bool  # the job an earlier request with the same key created


def submit(session: Session, settings: Settings, celery: Celery, kind: str, spec_model: Any,
           owner: str, owner_filter: str | None, key: str | None = None) -> Submitted:
    """Check and queue a job of `kind` (`spec_model`: its validated spec) for `owner`;
    `owner_filter` is whose files its references may name (None: anyone's, an admin)."""
    if (settings.tensorboard and "tensorboard" in type(spec_model).model_fields
            and "tensorboard" not in spec_model.model_fields_set):
        # The service's default for a request that does not say (QUANTA_TENSORBOARD).
        spec_model = spec_model.model_copy(update={"tensorboard": True})
    spec = spec_model.model_dump(mode="json")
    if key is not None and (first := crud.job_by_idempotency_key(session, owner, key)):
        return _replay(first, kind, spec, key)
    if kind == studies.KIND and spec_model.own_network:
        spec_model = study_with_layers(session, settings, spec_model, owner_filter)
        spec = spec_model.model_dump(mode="json")
    local = resolve_spec(session, settings, spec_model, owner=owner_filter)
    network = source_network.network_of(local)  # the job keeps the weights file's network
    if network is not None and spec.get("architecture") is None:
        spec["architecture"] = network
    new_jobs = spec_model.nb_of_jobs if kind == studies.KIND else 1
    quotas.check_work(settings, local)  # one job (for a study: each of its jobs)
    if kind == studies.KIND:
        quotas.check_work(settings, local, study_jobs=new_jobs,
                          study_witnesses=spec_model.max_runs if spec_model.witness else 0)
    try:
        lock_owner(session, owner)  # the counts below and the insert are one step
        _check_queue(session, settings, owner, new_jobs)
        quotas.check_storage(session, settings, owner)
        job = crud.create_job(session, kind, spec, owner=owner, idempotency_key=key)
        if job.kind == studies.KIND:
            studies.add_children(session, job)  # they inherit its owner
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent request with the same key won the insert
        first = crud.job_by_idempotency_key(session, owner, key) if key else None
        if first is None:
            raise
        log.info("Idempotency-Key race lost to job %s: replaying it", first.id)
        return _replay(first, kind, spec, key or "")
    except BaseException:
        session.rollback()  # frees the owner's lock at once
        raise
    job_events.record_status(session, job)
    if job.kind == studies.KIND:
        studies.enqueue_children(celery, session, job)
    else:
        enqueue(celery, session, [job.id])
    return Submitted(job, replayed=False)


def _check_queue(session: Session, settings: Settings, owner: str, new_jobs: int) -> None:
    """429 when `new_jobs` more would put `owner` over the queued-jobs cap."""
    cap = settings.max_queued_per_owner
    if cap and (queued := crud.count_queued(session, owner)) + new_jobs > cap:
        adding = f" and this request adds {new_jobs}" if new_jobs > 1 else ""
        raise TooManyRequests(f"you have {queued} queued jobs{adding}; {cap} queued jobs "
                              "are the most allowed (QUANTA_MAX_QUEUED_PER_OWNER); wait for "
                              "some to start, or cancel some")


def _replay(first: Job, kind: str, spec: dict[str, Any], key: str) -> Submitted:
    """The job a first request with this key created, if this request is the same."""
    if first.kind != kind or not source_network.same_request(first.spec, spec):
        raise reused(key, "job")
    return Submitted(first, replayed=True)
