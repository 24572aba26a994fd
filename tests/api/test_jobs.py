"""Jobs endpoints on SQLite and PostgreSQL: submit, validate references, list, cancel."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.files import keras_zip_bytes, npz_bytes
from tests.support.jobs import TINY_SOURCE
from tests.support.reference_files import reference_weights_bytes


def transfer_spec(weights: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"source_task": "digits", "target_task": "digits", "source_weights": weights,
            "layer_to_transfer": 0, "nb_of_target_epochs": 2, "nb_of_target_samples": 64,
            "width_multiplier": 0.0625, **extra}


def locs(response: Any) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]


def test_create_source_job(client: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["kind"] == "source" and job["status"] == "queued"
    assert job["spec"]["nb_of_epochs"] == 2 and job["spec"]["augment_data"] is False
    assert job["attempts"] == 0 and job["progress"] is None and job["error"] is None
    assert job["created_at"].endswith("Z") or "+00:00" in job["created_at"]
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert response.headers["location"] == job["links"]["self"]
    again = client.get(job["links"]["self"])
    assert again.status_code == 200 and again.json()["id"] == job["id"]


def test_create_job_sends_the_message(client: Any, app: Any, db: Any) -> None:
    from quanta_jobs.models import Job

    job_id = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}).json()["id"]
    assert db.get(Job, job_id).enqueued_at is not None
    with app.state.celery.connection_for_write() as conn:
        assert conn.default_channel._size(app.state.settings.queue) >= 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "source", "spec": {**TINY_SOURCE, "learning_rate": 1}}, "learning_rate"),
        ({"kind": "source", "spec": TINY_SOURCE, "priority": 1}, "priority"),
        ({"kind": "source", "spec": {**TINY_SOURCE, "source_task": "imagenet"}}, "source_task"),
        ({"kind": "source", "spec": {**TINY_SOURCE, "nb_of_epochs": 0}}, "nb_of_epochs"),
        ({"kind": "source", "spec": {**TINY_SOURCE, "source_task": "npz:/etc/x.npz"}},
         "source_task"),
        ({"kind": "transfer", "spec": transfer_spec({"job": "x"}, layer_to_transfer=7)},
         "layer_to_transfer"),
        ({"kind": "transfer", "spec": transfer_spec("/srv/weights.h5")}, "source_weights"),
        ({"kind": "transfer", "spec": transfer_spec({"job": "../x"})}, "job"),
        ({"kind": "training", "spec": TINY_SOURCE}, "body"),
        ({"spec": TINY_SOURCE}, "body"),
    ],
)
def test_invalid_job_is_422_naming_the_field(client: Any, body: dict[str, Any],
                                             field: str) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert any(field in loc for loc in locs(response)), response.text


def test_not_json_is_422(client: Any) -> None:
    response = client.post("/v1/jobs", content=b"{nope", headers={"content-type":
                                                                   "application/json"})
    assert response.status_code == 422


def test_unknown_job_reference_is_422(client: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "transfer",
                                             "spec": transfer_spec({"job": "nosuchjob"})})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "spec", "source_weights", "job"]
    assert "nosuchjob" in detail["msg"]


def test_transfer_on_succeeded_source_job(client: Any, source_job: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "transfer",
                                             "spec": transfer_spec({"job": source_job.id})})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["source_weights"] == {"job": source_job.id}  # as given


@pytest.mark.parametrize("status", ["queued", "running", "failed"])
def test_transfer_on_unfinished_source_job_is_409(client: Any, finished_job: Any,
                                                  status: str) -> None:
    job = finished_job("source", TINY_SOURCE, status=status)
    response = client.post("/v1/jobs", json={"kind": "transfer",
                                             "spec": transfer_spec({"job": job.id})})
    assert response.status_code == 409
    assert status in response.json()["detail"][0]["msg"]


def test_transfer_job_as_source_weights_is_422(client: Any, finished_job: Any,
                                               source_job: Any) -> None:
    transfer = finished_job("transfer", transfer_spec({"job": source_job.id}))
    response = client.post("/v1/jobs", json={"kind": "transfer",
                                             "spec": transfer_spec({"job": transfer.id})})
    assert response.status_code == 422
    assert "needs a source job" in response.json()["detail"][0]["msg"]


def test_source_job_without_weights_is_422(client: Any, finished_job: Any) -> None:
    job = finished_job("source", {**TINY_SOURCE, "show_only_build": True}, {})
    response = client.post("/v1/jobs", json={"kind": "transfer",
                                             "spec": transfer_spec({"job": job.id})})
    assert response.status_code == 422
    assert "source.weights.h5" in response.json()["detail"][0]["msg"]


def test_run_of_a_source_job_is_422(client: Any, source_job: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": transfer_spec(
        {"job": source_job.id, "run": 1})})
    assert response.status_code == 422
    assert locs(response) == [["body", "spec", "source_weights", "run"]]


def test_train_from_previous_transfer_run(client: Any, finished_job: Any, source_job: Any) -> None:
    previous = finished_job("transfer", {**transfer_spec({"job": source_job.id}), "nb_of_runs": 2},
                            {f"digits_to_digits/target_r_{r}_l_0.keras": keras_zip_bytes()
                             for r in range(2)})
    ok = transfer_spec({"job": source_job.id},
                       train_from_previous_training={"job": previous.id, "run": 1})
    assert client.post("/v1/jobs", json={"kind": "transfer", "spec": ok}).status_code == 201
    bad = transfer_spec({"job": source_job.id},
                        train_from_previous_training={"job": previous.id, "run": 2})
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": bad})
    assert response.status_code == 422
    assert locs(response) == [["body", "spec", "train_from_previous_training", "run"]]
    wrong_kind = transfer_spec({"job": source_job.id},
                               train_from_previous_training={"job": source_job.id})
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": wrong_kind})
    assert response.status_code == 422


def test_source_from_previous_source_job(client: Any, source_job: Any) -> None:
    spec = {**TINY_SOURCE, "train_from_previous_training": {"job": source_job.id}}
    response = client.post("/v1/jobs", json={"kind": "source", "spec": spec})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["train_from_previous_training"] == {"job": source_job.id}


def test_upload_references_must_have_the_right_kind(client: Any, upload: Any) -> None:
    weights = upload("w.weights.h5", reference_weights_bytes()).json()["id"]
    dataset = upload("mine.npz", npz_bytes()).json()["id"]
    model = upload("m.keras", keras_zip_bytes()).json()["id"]
    good = transfer_spec({"upload": weights}, target_task={"upload": dataset},
                         train_from_previous_training={"upload": model})
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": good})
    assert response.status_code == 201, response.text
    for field, value in [("source_weights", {"upload": dataset}),
                         ("target_task", {"upload": weights}),
                         ("train_from_previous_training", {"upload": weights})]:
        spec = {**good, field: value}
        response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
        assert response.status_code == 422, field
        assert locs(response) == [["body", "spec", field, "upload"]]
        assert "needs a" in response.json()["detail"][0]["msg"]
    spec = {**good, "source_weights": {"upload": "missing"}}
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert response.status_code == 422 and "no upload" in response.text


def test_get_unknown_job_is_404(client: Any) -> None:
    response = client.get("/v1/jobs/nosuchjob")
    assert response.status_code == 404
    assert "nosuchjob" in response.json()["detail"]


def test_list_filters_and_pages_newest_first(client: Any, finished_job: Any,
                                             source_job: Any) -> None:
    created = [client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}).json()["id"]
               for _ in range(5)]
    finished_job("transfer", transfer_spec({"job": source_job.id}), status="failed")
    everything = client.get("/v1/jobs").json()
    assert everything["total"] == 7 and everything["next"] is None
    assert [j["id"] for j in everything["items"]][1:6] == created[::-1]
    page = client.get("/v1/jobs", params={"kind": "source", "status": "queued", "limit": 2}).json()
    assert page["total"] == 5 and [j["id"] for j in page["items"]] == created[:-3:-1]
    assert page["next"] == "/v1/jobs?status=queued&kind=source&limit=2&offset=2"
    seen = [j["id"] for j in page["items"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == created[::-1]
    failed = client.get("/v1/jobs", params={"status": "failed"}).json()
    assert failed["total"] == 1 and failed["items"][0]["error"] == "boom"
    assert client.get("/v1/jobs", params={"kind": "transfer"}).json()["total"] == 1


def test_a_page_shows_each_job_as_its_own_url_does_from_one_query(
        client: Any, finished_job: Any, source_job: Any, db: Any, app: Any) -> None:
    from sqlalchemy import event

    queued = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}).json()["id"]
    finished_job("transfer", transfer_spec({"job": source_job.id}), status="failed")
    running = finished_job("source", dict(TINY_SOURCE), status="running")
    running.progress = {"run": 0, "nb_of_runs": 1, "epoch": 1, "nb_of_epochs": 2,
                        "fraction": 0.5, "metrics": {"loss": 1.25, "auc": None}}
    db.commit()
    statements: list[str] = []
    engine = app.state.sessionmaker.kw["bind"]

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM jobs" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        page = client.get("/v1/jobs").json()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1  # the rows and their total together
    assert page["total"] == 4 and len(page["items"]) == 4
    assert queued in {job["id"] for job in page["items"]}
    for job in page["items"]:
        assert job == client.get(f"/v1/jobs/{job['id']}").json()
    shown = {job["id"]: job for job in page["items"]}
    assert shown[running.id]["progress"]["metrics"] == {"loss": 1.25, "auc": None}
    assert shown[source_job.id]["finished_at"] is not None
    # Past the last page: no rows, and still the total.
    assert client.get("/v1/jobs", params={"offset": 10}).json() | {"items": []} == {
        "items": [], "total": 4, "limit": 50, "offset": 10, "next": None}


@pytest.mark.parametrize("params", [{"limit": 501}, {"limit": 0}, {"offset": -1},
                                    {"status": "done"}, {"kind": "x"}])
def test_list_bad_query_is_422(client: Any, params: dict[str, Any]) -> None:
    assert client.get("/v1/jobs", params=params).status_code == 422


def test_cancel_queued_job_at_once(client: Any) -> None:
    job = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}).json()
    response = client.post(job["links"]["cancel"])
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    assert client.post(job["links"]["cancel"]).status_code == 409


def test_cancel_running_job_sets_the_flag(client: Any, finished_job: Any) -> None:
    job = finished_job("source", TINY_SOURCE, status="running")
    response = client.post(f"/v1/jobs/{job.id}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running" and body["cancel_requested"] is True


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancel_finished_job_is_409(client: Any, finished_job: Any, status: str) -> None:
    job = finished_job("source", TINY_SOURCE, status=status)
    response = client.post(f"/v1/jobs/{job.id}/cancel")
    assert response.status_code == 409
    assert status in response.json()["detail"]


def test_cancel_unknown_job_is_404(client: Any) -> None:
    assert client.post("/v1/jobs/nosuchjob/cancel").status_code == 404


def test_broker_down_still_201_and_resent_later(settings: Any, tmp_path: Any) -> None:
    """A job whose message could not be sent stays queued; the resend loop sends it."""
    from fastapi.testclient import TestClient

    from api.main import create_app, resend_pending
    from quanta_jobs.models import Job
    from quanta_jobs.queue import make_celery

    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(down)
    with TestClient(app) as client:
        response = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE})
        assert response.status_code == 201 and response.json()["status"] == "queued"
        job_id = response.json()["id"]
        with app.state.sessionmaker() as session:
            job = session.get(Job, job_id)
            assert job.enqueued_at is None
            job.created_at = job.created_at.replace(year=2000)
            session.commit()
        assert resend_pending(app) == 0  # still down
        app.state.celery = make_celery(settings)  # the broker is back
        assert resend_pending(app) == 1
        assert resend_pending(app) == 0
        with app.state.sessionmaker() as session:
            assert session.get(Job, job_id).enqueued_at is not None


@pytest.mark.parametrize("tensorboard", [True, False])
def test_the_service_default_turns_tensorboard_on_unless_the_spec_says(
        settings: Any, source_job: Any, tensorboard: bool) -> None:
    """QUANTA_TENSORBOARD=true: a spec that does not say gets `"tensorboard": true` stored;
    one that says false keeps false."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings.model_copy(update={"tensorboard": tensorboard}))) as c:
        unsaid = c.post("/v1/jobs", json={"kind": "transfer",
                                          "spec": transfer_spec({"job": source_job.id})})
        said = c.post("/v1/jobs", json={"kind": "transfer", "spec": {
            **transfer_spec({"job": source_job.id}), "tensorboard": False}})
    assert unsaid.status_code == 201 and said.status_code == 201
    assert unsaid.json()["spec"]["tensorboard"] is tensorboard
    assert said.json()["spec"]["tensorboard"] is False
