"""The queue: the Celery application, and sending jobs to the broker.

The API and the workers send tasks by name (the task code is `worker.tasks`, which
the API never imports), so this never imports TensorFlow, Keras or `quanta`. There is
no result backend: the database is the source of truth.

A job is sent to the broker after its row is committed, never before, and marked
`enqueued_at` once the broker took it; when the broker is down it simply stays queued
with no `enqueued_at`, and the API's sweeper (`quanta_jobs.recovery.sweep`) sends it
later. `enqueue` and `request_study_end` are the one place that does this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from quanta_jobs.models import Job, utcnow
from quanta_jobs.settings import Settings, get_settings
from quanta_jobs.sqla_transport import install as install_sqla_transport

log = logging.getLogger(__name__)

TASK_NAME = "worker.tasks.run_job"
#: How long an unacknowledged message waits before the broker hands it out again.
#: Long, because a job runs for hours and is acknowledged only at its end; a copy
#: delivered while the job still runs is recognised and dropped (see worker.runner).
VISIBILITY_TIMEOUT_S = 12 * 3600
#: How often a worker polls the embedded (SQL) broker for a message.
SQLA_POLLING_INTERVAL_S = 0.2


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for `settings`: late acks, one message at a time, JSON only."""
    settings = settings or get_settings()
    install_sqla_transport()
    app = Celery("quanta", broker=settings.broker_url, set_as_current=False)
    transport_options: dict[str, object] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if not broadcasts(settings):
        transport_options = {"polling_interval": SQLA_POLLING_INTERVAL_S}
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        # Celery's task events for Flower and `celery events` (-E), where they can go.
        worker_send_task_events=sends_events(settings),
        task_send_sent_event=sends_events(settings),
        enable_utc=True,
    )
    return app


def broadcasts(settings: Settings) -> bool:
    """Whether the broker carries Celery's broadcast messages (events, heartbeats,
    `inspect`): Redis and RabbitMQ do; the embedded SQL transport does not."""
    return not settings.broker_url.startswith(("sqla+", "sqlalchemy+"))


def sends_events(settings: Settings) -> bool:
    """QUANTA_TASK_EVENTS, or by default: on where the broker broadcasts."""
    return broadcasts(settings) if settings.task_events is None else settings.task_events


def send_run_job(app: Celery, job_id: str) -> None:
    """Queue a job by task name; raises if the broker cannot be reached (quickly)."""
    app.send_task(
        TASK_NAME,
        args=[job_id],
        task_id=job_id,
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5,
                      "interval_max": 0.5},
    )


def ping_broker(app: Celery, timeout: float = 3.0) -> None:
    """Open a connection to the broker; raises when it is unreachable."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        channel = connection.default_channel
        if connection.transport_cls in ("redis", "rediss"):
            channel.client.ping()
        elif hasattr(channel, "_size"):  # SQL transport: the tables must answer
            channel._size(app.conf.task_default_queue)


#: Ends a study whose children have all ended (statistics, plots, final status).
FINISH_STUDY_TASK = "worker.tasks.finish_study"


def send_finish_study(app: Celery, study_id: str) -> None:
    """Ask a worker to end a study; safe to send twice (the worker claims it first)."""
    app.send_task(
        FINISH_STUDY_TASK,
        args=[study_id],
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5,
                      "interval_max": 0.5},
    )


def _send_each(send: Callable[[str], None], ids: list[str], what: str) -> list[str]:
    """Send `ids` in order until the broker fails; the ids sent."""
    sent: list[str] = []
    for item in ids:
        try:
            send(item)
        except Exception as exc:
            log.warning("broker unreachable (%s: %s); %s %s and %d more wait for the sweeper",
                        type(exc).__name__, exc, what, item, len(ids) - len(sent) - 1)
            break
        sent.append(item)
    return sent


def enqueue(app: Celery, session: Session, job_ids: Iterable[str]) -> int:
    """Send each (committed, queued) job to the broker, or leave it queued for the sweeper.

    The jobs sent get `enqueued_at` (committed here); at the first failure the rest stay
    as they are, unmarked, and the sweeper sends them once the broker is back. A job sent
    twice is harmless: the worker that claims it first runs it. Returns how many were sent.
    """
    sent = _send_each(lambda job_id: send_run_job(app, job_id), list(job_ids), "job")
    if sent:
        session.execute(update(Job).where(Job.id.in_(sent)).values(enqueued_at=utcnow())
                        .execution_options(synchronize_session=False))
        session.commit()
    return len(sent)


def request_study_end(app: Celery, study_ids: Iterable[str]) -> int:
    """Ask a worker to end each study, or leave it to the sweeper (which finds studies
    whose children all ended); returns how many requests were sent."""
    return len(_send_each(lambda study_id: send_finish_study(app, study_id), list(study_ids),
                          "study end"))
