"""Live progress: numbered job events and their Server-Sent Events stream.

On SQLite and PostgreSQL (the `settings` fixture). Workers are played by hand: they
record events with `api.job_events` exactly as `worker.studies` does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from api import events
from quanta_client.api import parse_sse
from quanta_jobs import job_events
from tests.support.waiting import wait_until


def test_format_and_resume_point() -> None:
    assert events.format_event("epoch", {"a": 1}, 7) == 'id: 7\nevent: epoch\ndata: {"a":1}\n\n'
    assert events.format_event("end", {}) == "event: end\ndata: {}\n\n"
    assert events.last_event_id("12", None) == 12
    assert events.last_event_id(None, 5) == 5
    assert events.last_event_id("junk", None) == 0
    assert events.last_event_id(None, None) == 0


def test_concurrent_writers_get_distinct_consecutive_numbers(db: Any, settings: Any,
                                                             finished_job: Any) -> None:
    """Children of one study, recorded by several workers at once: every event gets its
    own number, in commit order, without a gap."""
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.models import Job

    root = finished_job("transfer", {"layer_to_transfer": 0}, status="running")
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    failures: list[BaseException] = []

    def write(count: int) -> None:
        try:
            with sessions() as session:
                job = session.get(Job, root.id)
                for _ in range(count):
                    assert job_events.record(session, job, job_events.EPOCH, {"x": 1})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(15,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.dispose()
    assert not any(thread.is_alive() for thread in threads), "a writer still running after 60 s"
    assert not failures, failures
    seqs = [e.seq for e in job_events.fetch(db, root, 0)]
    assert seqs == list(range(1, 61))


def epoch(job: Any, run: int, number: int) -> dict[str, Any]:
    return job_events.epoch_data(job, {"run": run, "nb_of_runs": 2, "epoch": number,
                                       "nb_of_epochs": 2, "fraction": 0.5, "metrics": {},
                                       "quantas": {"0": {"source": 0.9, "target": 0.1}}})


def test_a_stream_follows_a_job_to_its_end(client: Any, db: Any, monkeypatch: Any,
                                           finished_job: Any) -> None:
    """Epochs recorded while the stream is open arrive in order, then the final status
    (here never recorded by a worker, so read from the job) and `end`."""
    from quanta_jobs.job_state import JobStatus, transition

    monkeypatch.setattr(events, "END_GRACE_S", 0.3)
    job = finished_job("transfer", {"layer_to_transfer": 0, "nb_of_runs": 2},
                       status="running")
    job_events.record_status(db, job)
    received: list[tuple[Any, ...]] = []

    def read() -> None:
        with client.stream("GET", f"/v1/jobs/{job.id}/events") as response:
            for event in parse_sse(response.iter_lines()):
                received.append(event)  # one by one: the test waits on each

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # each epoch recorded once the stream is open and has sent all before it: recorded
    # while it is open, not read in one go at the end
    def sent(count: int) -> Callable[[], bool]:
        return lambda: len(received) >= count

    wait_until(sent(1), 30, "the stream sending the job's status")
    recorded = 1  # the status event
    for run in range(2):
        for number in (1, 2):
            job_events.record(db, job, job_events.EPOCH, epoch(job, run, number))
            recorded += 1
            wait_until(sent(recorded), 30, f"the stream sending epoch {number} of run {run}")
    transition(db, job, JobStatus.SUCCEEDED, owner="test@host")
    db.commit()
    reader.join(30)
    assert not reader.is_alive()
    names = [name for _, name, _ in received]
    assert names == ["status", "epoch", "epoch", "epoch", "epoch", "status", "end"]
    assert [(d["run"], d["epoch"]) for _, n, d in received if n == "epoch"] == [
        (0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(d["layer"] == "0" for _, n, d in received if n == "epoch")
    ids = [seq for seq, _, _ in received]
    assert ids[:5] == [1, 2, 3, 4, 5] and ids[5:] == [None, None]  # read from the job
    assert received[-2][2]["status"] == received[-1][2]["status"] == "succeeded"


def test_a_recorded_final_status_ends_the_stream_at_once(client: Any, db: Any,
                                                         finished_job: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job = finished_job("transfer", {"layer_to_transfer": 2}, status="failed")
    job_events.record_status(db, job)
    # A grace far longer than any slow day: a stream that waited for it would show.
    monkeypatch.setattr(events, "END_GRACE_S", 120.0)
    began = time.monotonic()
    with client.stream("GET", f"/v1/jobs/{job.id}/events") as response:
        received = list(parse_sse(response.iter_lines()))
    assert time.monotonic() - began < 60
    assert [(seq, name) for seq, name, _ in received] == [(1, "status"), (None, "end")]
    assert received[0][2]["error"] == "boom" and received[1][2]["status"] == "failed"


def test_events_of_an_unknown_job_are_404(client: Any) -> None:
    response = client.get("/v1/jobs/nope/events")
    assert response.status_code == 404 and "no job" in response.json()["detail"]


@pytest.mark.parametrize("resume", ["header", "query"])
def test_resume_after_the_last_event_seen(client: Any, db: Any, finished_job: Any,
                                          resume: str) -> None:
    job = finished_job("transfer", {"layer_to_transfer": 0}, status="running")
    for number in (1, 2, 3):
        job_events.record(db, job, job_events.EPOCH, epoch(job, 0, number))
    from quanta_jobs.job_state import JobStatus, transition

    transition(db, job, JobStatus.CANCELLED, owner="test@host")
    db.commit()
    job_events.record_status(db, job)
    options: dict[str, Any] = ({"headers": {"Last-Event-ID": "2"}} if resume == "header"
                               else {"params": {"after": 2}})
    with client.stream("GET", f"/v1/jobs/{job.id}/events", **options) as response:
        received = list(parse_sse(response.iter_lines()))
    assert [(seq, name) for seq, name, _ in received] == [(3, "epoch"), (4, "status"),
                                                          (None, "end")]
