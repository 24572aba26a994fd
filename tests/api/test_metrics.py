"""`GET /metrics`, read back with the Prometheus client's own parser, on SQLite and
PostgreSQL: jobs by kind and status, queued jobs, stored bytes, job durations and
attempts, and the API's latency by route; an admin's only when tokens are set."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.files import npz_bytes
from tests.support.jobs import TINY_SOURCE


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_the_service_holds(client: Any, finished_job: Any,
                                              upload: Any) -> None:
    for status in ("succeeded", "succeeded", "failed"):
        finished_job("source", TINY_SOURCE, files={"a.json": b"{}" * 50}, status=status)
    client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE})  # queued
    dataset = npz_bytes()
    assert upload("d.npz", dataset).status_code == 201
    job_id = client.get("/v1/jobs").json()["items"][0]["id"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("quanta_jobs", (("kind", "source"), ("status", "succeeded")))] == 2
    assert got[("quanta_jobs", (("kind", "source"), ("status", "failed")))] == 1
    assert got[("quanta_queued_jobs", ())] == 1
    assert got[("quanta_stored_bytes", (("area", "artifacts"),))] == 3 * 100
    assert got[("quanta_stored_bytes", (("area", "uploads"),))] == len(dataset)
    assert got[("quanta_uploads", ())] == 1
    # the three ended jobs: one attempt each, each lasted under a minute
    assert got[("quanta_job_attempts_count", (("kind", "source"),))] == 3
    assert got[("quanta_job_attempts_bucket", (("kind", "source"), ("le", "1.0")))] == 3
    assert got[("quanta_job_duration_seconds_bucket", (("kind", "source"), ("le", "60.0")))] == 3
    # the API's latency, by route template (not by id)
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert got[("quanta_http_request_duration_seconds_count", route)] == 1


def test_metrics_need_an_admin_token_when_tokens_are_set(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    tokens = "alice:alice-secret-token-0001,root:root-secret-token-00003:admin"
    with TestClient(create_app(settings.model_copy(update={"api_tokens": tokens}))) as api:
        assert api.get("/metrics").status_code == 401
        refused = api.get("/metrics", headers={"Authorization": "Bearer alice-secret-token-0001"})
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        allowed = api.get("/metrics", headers={"Authorization": "Bearer root-secret-token-00003"})
        assert allowed.status_code == 200 and "quanta_jobs" in allowed.text
