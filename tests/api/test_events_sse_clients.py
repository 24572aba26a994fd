"""The event stream as a common SSE client reads it (httpx-sse): every event has data."""

from __future__ import annotations

from typing import Any

from httpx_sse import connect_sse

from api import events
from quanta_jobs import job_events
from quanta_jobs.job_state import JobStatus, transition


def test_every_event_parses_as_json_and_the_first_sets_retry(client: Any, db: Any,
                                                             finished_job: Any) -> None:
    job = finished_job("transfer", {"layer_to_transfer": 0}, status="running")
    for number in (1, 2):
        job_events.record(db, job, job_events.EPOCH, {"job": job.id, "epoch": number})
    transition(db, job, JobStatus.SUCCEEDED, owner="test@host")
    db.commit()
    job_events.record_status(db, job)
    with connect_sse(client, "GET", f"/v1/jobs/{job.id}/events") as source:
        received = list(source.iter_sse())
    assert [e.event for e in received] == ["epoch", "epoch", "status", "end"]
    datas = [e.json() for e in received]  # raises on an event without data
    assert [d.get("epoch") for d in datas[:2]] == [1, 2]
    assert datas[-1]["status"] == "succeeded"
    assert received[0].retry == events.RETRY_MS
    assert all(e.retry is None for e in received[1:])


def test_a_stream_of_a_finished_job_without_events_still_sets_retry() -> None:
    text = events.format_event("end", {"status": "failed"}, retry_ms=events.RETRY_MS)
    assert text.startswith(f"retry: {events.RETRY_MS}\nevent: end\ndata: ")
