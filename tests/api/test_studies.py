"""Studies through the API, without workers: fan-out, checks, progress, cancel, ending.

Runs on SQLite and PostgreSQL (the `client` fixture). What a worker does is played
here by hand (status transitions, files), or by calling `worker.studies` directly.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.files import png_size
from tests.support.reference_files import reference_weights_bytes

LAYERS = [0, 3]


def study_spec(weights: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"source_task": "digits", "target_task": "digits", "source_weights": weights,
            "layers": LAYERS, "nb_of_runs": 2, "nb_of_target_epochs": 2,
            "nb_of_target_samples": 64, "width_multiplier": 0.0625, "seed": 5, **extra}


def post_study(client: Any, source_job: Any, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"kind": "study",
                                             "spec": study_spec({"job": source_job.id}, **extra)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def children(client: Any, study_id: str) -> list[dict[str, Any]]:
    body = client.get(f"/v1/jobs/{study_id}/children").json()
    return list(body["items"])


def test_a_study_fans_out_one_transfer_job_per_layer_and_run(client: Any, source_job: Any,
                                                             db: Any, settings: Any) -> None:
    from quanta_jobs.models import Job
    from quanta_jobs.queue import make_celery

    study = post_study(client, source_job, include_all_at_once=True, witness=True)
    assert study["kind"] == "study" and study["status"] == "queued"
    assert study["links"]["children"].endswith("/children")
    assert study["progress"]["total"] == 6 and study["progress"]["done"] == 0
    assert set(study["progress"]["by_layer"]) == {"0", "3", "all"}
    jobs = children(client, study["id"])
    # Run by run, layer by layer; each child one run seeded with seed + run.
    assert [(j["spec"]["layer_to_transfer"], j["study_run"], j["spec"]["seed"]) for j in jobs] == [
        (0, 0, 5), (3, 0, 5), (-1, 0, 5), (0, 1, 6), (3, 1, 6), (-1, 1, 6)]
    for job in jobs:
        assert job["kind"] == "transfer" and job["parent_id"] == study["id"]
        assert job["spec"]["nb_of_runs"] == 1
        # Only the first layer's jobs train the run's witness; the others share it.
        assert job["spec"]["witness"] is (job["spec"]["layer_to_transfer"] == 0)
        assert "layers" not in job["spec"] and job["status"] == "queued"
    listed = client.get("/v1/jobs", params={"parent_id": study["id"], "limit": 4}).json()
    assert listed["total"] == 6 and "parent_id=" in listed["next"]
    # The children are on the broker; the study itself never is.
    rows = {j.id: j for j in db.query(Job).all()}
    assert all(rows[j["id"]].enqueued_at is not None for j in jobs)
    celery = make_celery(settings)
    with celery.connection_for_write() as conn:
        assert conn.default_channel._size(settings.queue) == 6


def test_unseeded_study_children_stay_unseeded(client: Any, source_job: Any) -> None:
    study = post_study(client, source_job, seed=None)
    assert {j["spec"]["seed"] for j in children(client, study["id"])} == {None}
    study = post_study(client, source_job, seed=-1)
    assert {j["spec"]["seed"] for j in children(client, study["id"])} == {-1}


@pytest.mark.parametrize(("extra", "field"), [
    ({"layer_to_transfer": 2}, "layer_to_transfer"),
    ({"layers": []}, "layers"),
    ({"layers": [0, 0]}, "layers"),
    ({"layers": [7]}, "layers"),
    ({"layers": "some"}, "layers"),
    ({"nb_of_runs": 0}, "nb_of_runs"),
    ({"show_only_build": True}, "show_only_build"),
    ({"train_from_previous_training": {"upload": "x"}}, "train_from_previous_training"),
    ({"nb_of_runs": 200, "layers": "all"}, None),  # 1400 jobs, over the cap
    ({"unknown": 1}, "unknown"),
])
def test_a_bad_study_is_422_naming_the_field(client: Any, source_job: Any,
                                             extra: dict[str, Any], field: str | None) -> None:
    response = client.post("/v1/jobs", json={"kind": "study",
                                             "spec": study_spec({"job": source_job.id}, **extra)})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    if field is not None:
        assert field in detail["loc"]
    else:
        assert "1400 jobs" in detail["msg"]
    assert client.get("/v1/jobs", params={"kind": "study"}).json()["total"] == 0


def test_a_study_on_a_missing_source_is_422(client: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "study",
                                             "spec": study_spec({"job": "nope"})})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-2:] == ["source_weights", "job"]
    assert client.get("/v1/jobs").json()["total"] == 0  # no study, no children


def test_summary_and_plots_wait_for_the_end(client: Any, source_job: Any) -> None:
    study = post_study(client, source_job)
    response = client.get(f"/v1/jobs/{study['id']}/summary")
    assert response.status_code == 409
    assert "0 of 4 child jobs ended" in response.json()["detail"]
    response = client.get(f"/v1/jobs/{study['id']}/plots/transferability.png")
    assert response.status_code == 404 and "drawn when it ends" in response.json()["detail"]
    child = children(client, study["id"])[0]
    response = client.get(f"/v1/jobs/{child['id']}/summary")
    assert response.status_code == 404 and "only studies" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{child['id']}/children").status_code == 404
    assert client.get("/v1/jobs/nope/summary").status_code == 404
    assert client.get(f"/v1/jobs/{study['id']}/plots/..%2Fx.png").status_code == 404


def read_events(client: Any, job_id: str, last: int | None = None) -> list[tuple[Any, ...]]:
    """(id, event, data) of a finished job's stream, read to its end."""
    from quanta_client.api import parse_sse

    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(parse_sse(response.iter_lines()))


def test_cancel_a_queued_study_cancels_every_child(client: Any, source_job: Any) -> None:
    study = post_study(client, source_job)
    response = client.post(f"/v1/jobs/{study['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True
    assert body["progress"]["cancelled"] == 4 and body["progress"]["done"] == 4
    assert {j["status"] for j in children(client, study["id"])} == {"cancelled"}
    assert client.post(f"/v1/jobs/{study['id']}/cancel").status_code == 409
    response = client.get(f"/v1/jobs/{study['id']}/summary")
    assert response.status_code == 409 and "cancelled" in response.json()["detail"]
    # Its stream: queued, each child cancelled, the study cancelled, end.
    events = read_events(client, study["id"])
    ids = [seq for seq, _, _ in events if seq is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    statuses = [(d["job"], d["status"]) for _, name, d in events if name == "status"]
    assert statuses[0] == (study["id"], "queued") and statuses[-1] == (study["id"], "cancelled")
    assert sorted(s for j, s in statuses if j != study["id"]) == ["cancelled"] * 4
    assert events[-1][1] == "end" and events[-1][2]["status"] == "cancelled"
    # Resuming after an event gives only what came after it.
    later = read_events(client, study["id"], last=ids[2])
    assert [seq for seq, _, _ in later if seq is not None] == ids[3:]


def running(db: Any, job_id: str, worker: str = "w@host") -> Any:
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    job = db.get(Job, job_id)
    transition(db, job, JobStatus.RUNNING, worker=worker)
    db.commit()
    return job


def test_cancel_a_running_study_ends_it_when_its_running_jobs_stop(
        client: Any, source_job: Any, db: Any, settings: Any) -> None:
    from quanta_jobs.job_state import JobStatus, transition
    from worker import hooks, study_end
    from worker.runner import JobRunner

    study = post_study(client, source_job)
    first = children(client, study["id"])[0]
    child = running(db, first["id"])
    runner = JobRunner(settings)
    hooks.job_started(runner.context, child.id)  # the worker's hook: the study starts running
    assert client.get(f"/v1/jobs/{study['id']}").json()["status"] == "running"

    body = client.post(f"/v1/jobs/{study['id']}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"] is True
    states = {j["id"]: (j["status"], j["cancel_requested"]) for j in children(client, study["id"])}
    assert states.pop(child.id) == ("running", True)
    assert set(states.values()) == {("cancelled", False)}
    # The worker stops the child at its next batch, and ends the study.
    db.refresh(child)
    transition(db, child, JobStatus.CANCELLED, owner="w@host")
    db.commit()
    hooks.job_ended(runner.context, child.id, "w@host")
    body = client.get(f"/v1/jobs/{study['id']}").json()
    assert body["status"] == "cancelled" and body["progress"]["cancelled"] == 4
    assert study_end.finish_study(runner.context, study["id"], "w@host") == "skipped"  # only once
    runner.engine.dispose()


JSONL_NAMES = ("quantas", "testing_metrics_of_target", "testing_metrics_of_witness",
               "testing_metrics_of_source", "training_metrics_of_target")


def write_child_files(root: Path, layer: str, lam: list[float], acc: float,
                      witness: float) -> None:
    folder = root / "digits_to_digits"
    folder.mkdir(parents=True)
    lines = {
        "quantas": {layer: {"keras_layer_index": 5, "quanta_weights": [[1.1, -1.1]] * len(lam),
                            "quantas": {"source": lam, "target": [1 - x for x in lam]}}},
        "testing_metrics_of_target": {"loss": 1.0, "categorical_accuracy": acc},
        "testing_metrics_of_witness": {"loss": 1.2, "categorical_accuracy": witness},
        "testing_metrics_of_source": {"loss": 0.5, "categorical_accuracy": 0.9},
        "training_metrics_of_target": {"0": {"loss": 1.0}},
    }
    for name in JSONL_NAMES:
        (folder / f"{name}_r_0_l_{layer}.jsonl").write_text(json.dumps(lines[name]) + "\n")


def test_a_failed_job_is_missing_from_the_summary(client: Any, source_job: Any, db: Any,
                                                  settings: Any) -> None:
    """Three children succeed and one fails: the study succeeds, its summary over the
    three, and `missing` names the failed job and its error; ended exactly once."""
    from quanta_jobs import crud
    from quanta_jobs.job_state import JobStatus, transition
    from tests.support.jobs import scan
    from worker import hooks, study_end
    from worker.runner import JobRunner

    study = post_study(client, source_job, witness=True)
    jobs = children(client, study["id"])
    runner = JobRunner(settings)
    values = {}
    for index, item in enumerate(jobs):
        child = running(db, item["id"])
        hooks.job_started(runner.context, child.id)
        layer, run = str(item["spec"]["layer_to_transfer"]), item["study_run"]
        if index == 3:
            transition(db, child, JobStatus.FAILED, owner="w@host", error="out of memory")
        else:
            lam = [0.9, 0.8 - 0.1 * index, 0.7 - 0.1 * index]
            values[(layer, run)] = (lam, 0.5 + index / 10, 0.4)
            write_child_files(settings.artifacts_dir / child.id, layer, *values[(layer, run)])
            crud.replace_artifacts(db, child.id, scan(settings.artifacts_dir / child.id))
            transition(db, child, JobStatus.SUCCEEDED, owner="w@host",
                       result={"experiment_dir": "digits_to_digits"})
        db.commit()
        hooks.job_ended(runner.context, child.id, "w@host")  # the last one ends the study
    assert study_end.finish_study(runner.context, study["id"], "other@host") == "skipped"
    runner.engine.dispose()

    body = client.get(f"/v1/jobs/{study['id']}").json()
    assert body["status"] == "succeeded", body
    failed = jobs[3]
    assert body["result"]["missing"] == [{
        "job": failed["id"], "layer": str(failed["spec"]["layer_to_transfer"]),
        "run": failed["study_run"], "status": "failed", "error": "out of memory"}]
    summary = client.get(f"/v1/jobs/{study['id']}/summary").json()
    assert summary["complete"] is False
    assert summary["missing"][0]["reason"] == f"job {failed['id']} failed: out of memory"
    zero = summary["entries"]["0"]
    finals = [values[("0", r)][0][-1] for r in (0, 1)]
    assert zero["lambda_s"]["0"]["values"] == pytest.approx(finals)
    assert zero["transfer_gain"]["values"] == pytest.approx(
        [values[("0", r)][1] - 0.4 for r in (0, 1)])
    assert summary["entries"]["3"]["runs"] == [0]  # run 1 of layer 3 failed
    paths = {a["path"] for a in client.get(f"/v1/jobs/{study['id']}/artifacts").json()["items"]}
    assert paths == {"summary.json", "summary.csv", "plots/transferability.png",
                     "plots/accuracy.png"}
    for name in ("transferability", "accuracy"):
        response = client.get(f"/v1/jobs/{study['id']}/plots/{name}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        width, height = png_size(response.content)
        assert 600 <= width <= 2000 and 400 <= height <= 1500
    finished = [d for _, name, d in read_events(client, study["id"]) if name == "status"
                and d["job"] == study["id"]]
    assert [d["status"] for d in finished] == ["queued", "running", "succeeded"]


def test_a_study_whose_jobs_all_ended_unnoticed_is_handed_to_a_worker(
        client: Any, source_job: Any, db: Any, settings: Any) -> None:
    from sqlalchemy import update

    from quanta_jobs import studies
    from quanta_jobs.models import Job, utcnow

    study = post_study(client, source_job)
    client.post(f"/v1/jobs/{study['id']}/cancel")
    # As if its children had ended long ago and nobody had ended the study.
    db.execute(update(Job).where(Job.id == study["id"])
               .values(status="running", cancel_requested=False))
    db.execute(update(Job).where(Job.parent_id == study["id"])
               .values(finished_at=utcnow() - timedelta(minutes=5)))
    db.commit()
    assert studies.stuck_studies(db, settings) == [study["id"]]
    # One being ended by a live worker is left alone.
    db.execute(update(Job).where(Job.id == study["id"])
               .values(worker="w (ending the study)", heartbeat_at=utcnow()))
    db.commit()
    assert studies.stuck_studies(db, settings) == []


def test_children_inherit_the_owner_of_their_study(tmp_path: Path, settings: Any,
                                                   finished_job: Any) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    token = "alice:" + "s" * 32
    config = settings.model_copy(update={"api_tokens": token})
    with TestClient(create_app(config)) as alice:
        headers = {"Authorization": f"Bearer {'s' * 32}"}
        weights = alice.post("/v1/uploads", headers=headers,
                             files={"file": ("w.weights.h5", reference_weights_bytes())})
        assert weights.status_code == 201, weights.text
        response = alice.post("/v1/jobs", headers=headers, json={"kind": "study", "spec": {
            **study_spec({"upload": weights.json()["id"]})}})
        assert response.status_code == 201, response.text
        study_id = response.json()["id"]
        assert alice.get(f"/v1/jobs/{study_id}/children").status_code == 401
        jobs = alice.get(f"/v1/jobs/{study_id}/children", headers=headers).json()["items"]
        assert len(jobs) == 4
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.models import Job

    engine = make_engine(config.database_url)
    with make_sessionmaker(engine)() as session:
        owners = {job.owner for job in session.query(Job).filter(Job.parent_id == study_id)}
        assert owners == {session.get(Job, study_id).owner} == {"alice"}
    engine.dispose()


def test_listing_studies_counts_their_progress_in_one_query(client: Any, source_job: Any,
                                                            db: Any, app: Any) -> None:
    from sqlalchemy import event

    from quanta_jobs.models import Job

    ids = [post_study(client, source_job)["id"] for _ in range(3)]
    # Arrange different progress per study: one child done in the 2nd, one running in the 3rd.
    for study_id, status, progress in ((ids[1], "succeeded", None),
                                       (ids[2], "running", {"fraction": 0.5})):
        child = db.query(Job).filter_by(parent_id=study_id).order_by(Job.created_at).first()
        child.status, child.progress = status, progress
    db.commit()
    one_by_one = {i: client.get(f"/v1/jobs/{i}").json()["progress"] for i in ids}
    assert [one_by_one[i]["done"] for i in ids] == [0, 1, 0]
    assert one_by_one[ids[2]]["fraction"] == pytest.approx(0.5 / 4)

    statements: list[str] = []
    engine = app.state.sessionmaker.kw["bind"]

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        page = client.get("/v1/jobs", params={"kind": "study"}).json()
        few = len(statements)
        statements.clear()
        client.get("/v1/jobs", params={"kind": "study", "limit": 1})
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert {job["id"]: job["progress"] for job in page["items"]} == one_by_one
    assert few == len(statements)  # 3 studies cost the same queries as 1: no query per study


def test_each_run_shares_the_witness_its_first_layer_trained() -> None:
    """A layer without its own witness gets the one of its run; a run whose witness job
    failed gets none (never another run's)."""
    from quanta.summary import RunRecord
    from worker.study_end import _shared_witnesses

    def record(entry: str, run: int, witness: float | None) -> RunRecord:
        return RunRecord(entry, run, {}, {"categorical_accuracy": 0.5},
                         None if witness is None else {"categorical_accuracy": witness})

    shared = _shared_witnesses([record("0", 0, 0.3), record("3", 0, None),
                                record("3", 1, None), record("0", 2, 0.7), record("all", 2, None)])
    assert [(r.entry, r.run, r.witness_metrics) for r in shared] == [
        ("0", 0, {"categorical_accuracy": 0.3}), ("3", 0, {"categorical_accuracy": 0.3}),
        ("3", 1, None), ("0", 2, {"categorical_accuracy": 0.7}),
        ("all", 2, {"categorical_accuracy": 0.7})]
