"""Holding the GPUs and the disks: ceilings on the work a job or a study plans, a queue
cap that counts a study's jobs, a default wall-time limit, a per-owner storage quota,
and deleting uploads and finished jobs (with their files) to free it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.files import npz_bytes
from tests.support.jobs import TINY_SOURCE


def transfer(source_job: Any, **spec: Any) -> dict[str, Any]:
    return {"kind": "transfer", "spec": {
        "source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
        "source_weights": {"job": source_job.id}, "width_multiplier": 0.0625, **spec}}


def study(source_job: Any, layers: list[int], runs: int, **spec: Any) -> dict[str, Any]:
    return {"kind": "study", "spec": {
        "source_task": "digits", "target_task": "digits", "layers": layers,
        "nb_of_runs": runs, "source_weights": {"job": source_job.id},
        "nb_of_target_epochs": 1, "nb_of_target_samples": 64, "width_multiplier": 0.0625,
        **spec}}


def test_a_job_planning_years_of_training_is_422_naming_the_field(client: Any,
                                                                   source_job: Any) -> None:
    # 10 000 runs x 100 000 epochs: allowed by the spec's types, 1.8e12 sample-epochs
    response = client.post("/v1/jobs", json=transfer(source_job, nb_of_runs=10_000,
                                                     nb_of_target_epochs=100_000))
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "spec", "nb_of_target_epochs"]
    assert "QUANTA_MAX_JOB_WORK" in error["msg"] and "10000 runs" in error["msg"]


def test_the_ceiling_counts_samples_and_the_witness(client: Any, app: Any,
                                                    source_job: Any) -> None:
    app.state.settings.max_job_work = 1000
    ok = transfer(source_job, nb_of_target_epochs=3, nb_of_target_samples=300)  # 900
    assert client.post("/v1/jobs", json=ok).status_code == 201
    doubled = transfer(source_job, nb_of_target_epochs=3, nb_of_target_samples=300,
                       witness=True)  # 1800
    response = client.post("/v1/jobs", json=doubled)
    assert response.status_code == 422 and "witness" in response.text
    # no nb_of_samples: the task's whole training split (digits: 1797 images)
    response = client.post("/v1/jobs", json={"kind": "source", "spec": {
        **TINY_SOURCE, "nb_of_samples": None}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "spec", "nb_of_epochs"]


def test_the_ceiling_of_an_uploaded_dataset_reads_its_header(client: Any, app: Any,
                                                             upload: Any) -> None:
    dataset = upload("d.npz", npz_bytes(n=200)).json()["id"]
    app.state.settings.max_job_work = 1000
    body = {"kind": "source", "spec": {"source_task": {"upload": dataset}, "nb_of_epochs": 6,
                                       "width_multiplier": 0.0625}}
    response = client.post("/v1/jobs", json=body)  # 6 epochs x 200 samples
    assert response.status_code == 422 and "200 samples" in response.text


def test_a_study_has_its_own_ceiling(client: Any, app: Any, source_job: Any) -> None:
    app.state.settings.max_study_work = 64 * 5
    response = client.post("/v1/jobs", json=study(source_job, [0, 1, 2], 2))  # 6 x 64
    assert response.status_code == 422, response.text
    assert "QUANTA_MAX_STUDY_WORK" in response.text
    assert client.post("/v1/jobs", json=study(source_job, [0, 1], 2)).status_code == 201


def test_a_study_counts_one_witness_per_run_not_per_job(client: Any, app: Any,
                                                         source_job: Any) -> None:
    """3 layers x 2 runs with a witness: 6 transfers and 2 witnesses (the first layer's
    jobs train them for every layer), not 12 trainings."""
    app.state.settings.max_study_work = 8 * 64
    allowed = client.post("/v1/jobs", json=study(source_job, [0, 1, 2], 2, witness=True))
    assert allowed.status_code == 201, allowed.text
    app.state.settings.max_study_work = 8 * 64 - 1
    refused = client.post("/v1/jobs", json=study(source_job, [0, 1, 2], 2, witness=True))
    assert refused.status_code == 422 and "8 runs (witness included)" in refused.text


def test_the_queue_cap_counts_a_studys_jobs(client: Any, app: Any, source_job: Any) -> None:
    app.state.settings.max_queued_per_owner = 5
    refused = client.post("/v1/jobs", json=study(source_job, [0, 1, 2], 2))  # 6 jobs
    assert refused.status_code == 429, refused.text
    assert "adds 6" in refused.json()["detail"]
    assert client.post("/v1/jobs", json=study(source_job, [0, 1], 2)).status_code == 201
    assert client.post("/v1/jobs", json=transfer(source_job)).status_code == 201  # 5
    assert client.post("/v1/jobs", json=transfer(source_job)).status_code == 429


def test_jobs_have_a_wall_time_limit_by_default() -> None:
    from quanta_jobs.settings import Settings

    assert Settings().max_job_seconds == 24 * 3600


def test_the_storage_quota_refuses_and_deleting_frees_it(client: Any, app: Any,
                                                         settings: Any, upload: Any) -> None:
    content = npz_bytes()
    app.state.settings.max_stored_bytes_per_owner = int(len(content) * 1.5)
    first = upload("a.npz", content)
    assert first.status_code == 201
    stored = settings.uploads_path / first.json()["id"]
    assert stored.is_dir()
    refused = upload("b.npz", content)
    assert refused.status_code == 507, refused.text
    assert "QUANTA_MAX_STORED_BYTES_PER_OWNER" in refused.text
    app.state.settings.max_stored_bytes_per_owner = len(content) // 2  # already over
    response = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE})
    assert response.status_code == 507
    assert client.delete(f"/v1/uploads/{first.json()['id']}").status_code == 204
    assert not stored.exists()
    assert client.get(f"/v1/uploads/{first.json()['id']}").status_code == 404
    assert client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}
                       ).status_code == 201


def test_an_upload_in_use_is_not_deleted(client: Any, upload: Any) -> None:
    dataset = upload("d.npz", npz_bytes()).json()["id"]
    job = client.post("/v1/jobs", json={"kind": "source", "spec": {
        "source_task": {"upload": dataset}, "nb_of_epochs": 1, "width_multiplier": 0.0625}})
    assert job.status_code == 201
    response = client.delete(f"/v1/uploads/{dataset}")
    assert response.status_code == 409 and job.json()["id"] in response.text
    client.post(f"/v1/jobs/{job.json()['id']}/cancel")
    assert client.delete(f"/v1/uploads/{dataset}").status_code == 204


def test_deleting_a_job_removes_its_files(client: Any, finished_job: Any,
                                          settings: Any) -> None:
    job = finished_job("source", dict(TINY_SOURCE), {"digits_training/a.jsonl": b"{}\n"})
    folder = settings.artifacts_dir / job.id
    assert folder.is_dir()
    assert client.delete(f"/v1/jobs/{job.id}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/v1/jobs/{job.id}").status_code == 404
    assert client.delete(f"/v1/jobs/{job.id}").status_code == 404


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_unfinished_job_is_not_deleted(client: Any, finished_job: Any, status: str) -> None:
    job = finished_job("source", dict(TINY_SOURCE), status=status)
    response = client.delete(f"/v1/jobs/{job.id}")
    assert response.status_code == 409 and "cancel it" in response.text


def test_deleting_a_study_removes_its_jobs(client: Any, source_job: Any, db: Any) -> None:
    from quanta_jobs.models import Job

    created = client.post("/v1/jobs", json=study(source_job, [0, 1], 1)).json()
    children = [c["id"] for c in client.get(f"/v1/jobs/{created['id']}/children"
                                            ).json()["items"]]
    assert len(children) == 2
    assert client.delete(f"/v1/jobs/{children[0]}").status_code == 409  # not ended
    client.post(f"/v1/jobs/{created['id']}/cancel")
    assert client.get(f"/v1/jobs/{created['id']}").json()["status"] == "cancelled"
    response = client.delete(f"/v1/jobs/{children[0]}")
    assert response.status_code == 409 and "delete the study" in response.text
    assert client.delete(f"/v1/jobs/{created['id']}").status_code == 204
    db.expire_all()
    assert all(db.get(Job, i) is None for i in [created["id"], *children])
