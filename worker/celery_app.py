"""The Celery application, built from the service settings.

Imported by the API to send `run_job` by name, so it must never import TensorFlow,
Keras or `quanta`. There is no result backend: the database is the source of truth.
"""

from __future__ import annotations

from celery import Celery

from api.settings import Settings, get_settings
from worker.sqla_transport import install as install_sqla_transport

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
    if settings.broker_url.startswith(("sqla+", "sqlalchemy+")):
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
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


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
