"""Hostile or repeated input, in process: idempotent retries, size limits, disguised and
dangerous uploads, path traversal, out-of-range numbers, quotas, partial files."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.files import hdf5_bytes, keras_zip_bytes, npz_bytes
from tests.support.jobs import TINY_SOURCE

SHOW = {**TINY_SOURCE, "show_only_build": True}


def job_body(**spec: Any) -> dict[str, Any]:
    return {"kind": "source", "spec": {**SHOW, **spec}}


# --- idempotency ------------------------------------------------------------------------
def test_retried_job_post_returns_the_first_job(client: Any, db: Any) -> None:
    from quanta_jobs.models import Job

    headers = {"Idempotency-Key": "retry-1"}
    first = client.post("/v1/jobs", json=job_body(), headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = client.post("/v1/jobs", json=job_body(), headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert db.query(Job).count() == 1
    other = client.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": "retry-2"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


def test_reused_key_with_another_body_is_422(client: Any) -> None:
    headers = {"Idempotency-Key": "k"}
    assert client.post("/v1/jobs", json=job_body(), headers=headers).status_code == 201
    response = client.post("/v1/jobs", json=job_body(seed=7), headers=headers)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["header", "Idempotency-Key"]
    assert "already used for a different job" in detail["msg"]


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", "a b"])
def test_malformed_idempotency_key_is_422(client: Any, key: str) -> None:
    response = client.post("/v1/jobs", json=job_body(),
                           headers={"Idempotency-Key": key.encode()})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_a_replay_is_not_refused_by_the_queue_cap(client: Any, app: Any) -> None:
    app.state.settings.max_queued_per_owner = 2
    keys = [{"Idempotency-Key": f"cap-{i}"} for i in range(3)]
    assert client.post("/v1/jobs", json=job_body(), headers=keys[0]).status_code == 201
    assert client.post("/v1/jobs", json=job_body(), headers=keys[1]).status_code == 201
    refused = client.post("/v1/jobs", json=job_body(), headers=keys[2])
    assert refused.status_code == 429
    assert "2 queued jobs" in refused.json()["detail"]
    assert "QUANTA_MAX_QUEUED_PER_OWNER" in refused.json()["detail"]
    assert refused.headers["retry-after"]
    assert client.post("/v1/jobs", json=job_body(), headers=keys[0]).status_code == 200
    job_id = client.get("/v1/jobs").json()["items"][0]["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")  # one fewer queued: room again
    assert client.post("/v1/jobs", json=job_body(), headers=keys[2]).status_code == 201


def test_the_queue_cap_counts_a_studys_jobs_not_the_study(client: Any, app: Any,
                                                          db: Any) -> None:
    from quanta_jobs.models import Job

    app.state.settings.max_queued_per_owner = 6
    parent = client.post("/v1/jobs", json=job_body()).json()["id"]
    db.add(Job(kind="study", status="queued", spec={}))  # no worker runs a study itself
    for _ in range(4):  # a study's jobs: each holds a worker when it runs
        db.add(Job(kind="transfer", status="queued", spec={}, parent_id=parent))
    db.commit()
    assert client.post("/v1/jobs", json=job_body()).status_code == 201  # the 6th
    assert client.post("/v1/jobs", json=job_body()).status_code == 429


def test_retried_upload_returns_the_first_upload(client: Any, settings: Any) -> None:
    content = npz_bytes()
    headers = {"Idempotency-Key": "up-1"}
    first = client.post("/v1/uploads", files={"file": ("d.npz", content)}, headers=headers)
    assert first.status_code == 201, first.text
    again = client.post("/v1/uploads", files={"file": ("d.npz", content)}, headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other = client.post("/v1/uploads", files={"file": ("d.npz", npz_bytes(n=30))},
                        headers=headers)
    assert other.status_code == 422 and "different file" in other.text
    stored = [p for p in settings.uploads_path.rglob("*") if p.is_file()]
    assert len(stored) == 1  # neither the replay nor the refused file was kept
    assert client.get("/v1/uploads").json()["total"] == 1


# --- size limits ----------------------------------------------------------------------------
def test_oversized_json_body_is_413(client: Any, app: Any) -> None:
    limit = app.state.settings.max_json_bytes
    padding = "x" * (limit + 10)
    response = client.post("/v1/jobs", json={"kind": "source", "spec": SHOW, "pad": padding})
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"][0]["msg"]


def test_oversized_chunked_json_body_is_413(client: Any, app: Any) -> None:
    """No Content-Length to trust: the body is counted and cut off at the limit (that the
    server then stops reading is checked on a real server, test_reliability_concurrency)."""
    def chunks() -> Iterator[bytes]:
        yield b'{"kind": "source", "spec": {}, "pad": "'
        for _ in range(200):
            yield b"x" * 16384
        yield b'"}'

    response = client.post("/v1/jobs", content=chunks(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_json_body_that_is_not_utf8_is_422(client: Any) -> None:
    response = client.post("/v1/jobs", content=b'{"kind": "\xff\xfe"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "not UTF-8" in response.json()["detail"][0]["msg"]


def test_json_bodies_under_the_limit_are_untouched(client: Any) -> None:
    body = job_body()
    response = client.post("/v1/jobs", content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]  # the body reached the route whole
    assert {key: spec[key] for key in body["spec"]} == body["spec"]


# --- uploads checked by content ------------------------------------------------------------
def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """An .npy file whose header claims `shape` but that holds no data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _lambda_config() -> bytes:
    layer = {"class_name": "Lambda", "config": {"name": "evil", "function": {
        "class_name": "__lambda__", "config": {"code": "YWJj", "defaults": None,
                                               "closure": None}}}}
    return json.dumps({"class_name": "Sequential", "config": {"layers": [layer]}}).encode()


@pytest.mark.parametrize(("name", "content", "kind", "reason"), [
    ("w.weights.h5", keras_zip_bytes(), "weights", "no HDF5 signature"),
    ("m.keras", hdf5_bytes(), "model", "not a .keras file"),
    ("d.npz", hdf5_bytes(), "dataset", "not a readable .npz"),
    ("d.npz", b"\x93NUMPY" + b"\x00" * 100, "dataset", "a single .npy array"),
    ("m.keras", _zip({"config.json": _lambda_config()}), None, "holds Python code"),
    ("m.keras", _zip({"config.json": b"[" * 100_000 + b"]" * 100_000}), None, "not valid JSON"),
    ("m.keras", _zip({"config.json": b" " * (17 * 1024 * 1024)}, zipfile.ZIP_DEFLATED), None,
     "bytes unpacked"),
    ("d.npz", _zip({"x_train.npy": b"\x93NUMPY garbage", "y_train.npy": b"",
                    "x_test.npy": b"", "y_test.npy": b""}), "dataset", "uses .npy format"),
    ("d.npz", _zip({"x_train.npy": _npy_header_only((10, 8, 8), "|O"),
                    "y_train.npy": _npy_header_only((10,), "<i8"),
                    "x_test.npy": _npy_header_only((5, 8, 8)),
                    "y_test.npy": _npy_header_only((5,), "<i8")}), "dataset",
     "x_train has dtype object"),
])
def test_disguised_or_dangerous_upload_is_422(upload: Any, settings: Any, name: str,
                                              content: bytes, kind: str | None,
                                              reason: str) -> None:
    response = upload(name, content, kind)
    assert response.status_code == 422, response.text
    assert reason in response.text
    assert [p for p in settings.uploads_path.rglob("*") if p.is_file()] == []


def test_npz_claiming_huge_arrays_is_checked_without_loading(upload: Any) -> None:
    """Headers claim 10^12 images: accepted or refused from the headers alone, in
    milliseconds and without memory (the worker loads and checks the values)."""
    content = _zip({"x_train.npy": _npy_header_only((10**12, 8, 8), "|u1"),
                    "y_train.npy": _npy_header_only((10**12,), "<i8"),
                    "x_test.npy": _npy_header_only((5, 8, 8), "|u1"),
                    "y_test.npy": _npy_header_only((4,), "<i8")})
    response = upload("huge.npz", content)
    assert response.status_code == 422
    assert "y_test has 4 labels but x_test has 5 images" in response.text


def test_object_npz_is_never_unpickled(upload: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the API unpickled user data")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    objects = np.empty(10, dtype=object)
    objects[:] = [{"a": i} for i in range(10)]
    response = upload("evil.npz", npz_bytes(n=10, x_train=objects))
    assert response.status_code == 422 and "dtype object" in response.text


# --- paths ------------------------------------------------------------------------------------
@pytest.fixture
def job_with_files(finished_job: Any, db: Any, settings: Any, tmp_path: Path) -> Any:
    """A succeeded job with one real file, and recorded symlinks to a secret outside it."""
    from quanta_jobs.models import Artifact

    job = finished_job("source", dict(TINY_SOURCE), {"digits_training/a.jsonl": b"{}\n"})
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    root = settings.artifacts_dir / job.id
    os.symlink(secret, root / "digits_training" / "link.jsonl")
    os.symlink(tmp_path, root / "escape")
    for path in ("digits_training/link.jsonl", "escape/secret.txt"):
        db.add(Artifact(job_id=job.id, path=path, size=10, sha256="0" * 64))
    db.commit()
    return job


@pytest.mark.parametrize("path", [
    "../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/etc/passwd", "%2Fetc%2Fpasswd",
    "digits_training/../../secret.txt", "digits_training/link.jsonl", "escape/secret.txt",
    "digits_training/a.jsonl%00.png", "..\\..\\etc\\passwd", "C:%5Cwindows",
])
def test_artifact_paths_cannot_escape_the_job_folder(client: Any, job_with_files: Any,
                                                     path: str) -> None:
    response = client.get(f"/v1/jobs/{job_with_files.id}/artifacts/{path}")
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert "top secret" not in response.text and "root:" not in response.text


def test_the_real_file_is_served_and_links_are_not_archived(client: Any,
                                                           job_with_files: Any) -> None:
    ok = client.get(f"/v1/jobs/{job_with_files.id}/artifacts/digits_training/a.jsonl")
    assert ok.status_code == 200 and ok.text == "{}\n"
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_with_files.id}/archive")
                                         .content))
    assert archive.namelist() == ["digits_training/a.jsonl"]


@pytest.mark.parametrize("job_id", ["..", "%2e%2e", "..%2f..%2fetc", "x" * 300])
def test_job_ids_in_urls_are_opaque(client: Any, job_id: str) -> None:
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/archive").status_code == 404


# --- numbers and fields -----------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("seed", 2**40), ("seed", -(2**40)), ("nb_of_epochs", 10**9), ("nb_of_samples", 2**40),
    ("nb_of_epochs", 0), ("width_multiplier", 1e400), ("width_multiplier", -1),
])
def test_numbers_out_of_range_are_422_naming_the_field(client: Any, field: str,
                                                       value: Any) -> None:
    body = json.dumps(job_body(**{field: value})).replace("Infinity", "1e400")
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    locs = [item["loc"] for item in response.json()["detail"]]
    assert any(field in loc for loc in locs), locs


def test_transfer_seed_plus_runs_must_fit(client: Any, source_job: Any) -> None:
    spec = {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
            "source_weights": {"job": source_job.id}, "seed": 2**32 - 2, "nb_of_runs": 5}
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "spec", "seed"]
    spec["nb_of_runs"] = 10**6
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "spec", "nb_of_runs"]


def test_unknown_fields_are_rejected(client: Any) -> None:
    response = client.post("/v1/jobs", json=job_body(evil="rm -rf /"))
    assert response.status_code == 422 and "evil" in response.text


# --- partial files of failed and cancelled jobs ------------------------------------------------
@pytest.mark.parametrize(("status", "partial"), [("succeeded", False), ("failed", True),
                                                 ("cancelled", True)])
def test_artifacts_of_unfinished_work_are_listed_as_partial(client: Any, finished_job: Any,
                                                            status: str, partial: bool) -> None:
    job = finished_job("source", dict(TINY_SOURCE), {"digits_training/x.jsonl": b"{}\n"},
                       status=status)
    listing = client.get(f"/v1/jobs/{job.id}/artifacts").json()
    assert listing["partial"] is partial
    assert [a["path"] for a in listing["items"]] == ["digits_training/x.jsonl"]


def test_cancelling_a_queued_job_drops_its_checkpoints(client: Any, settings: Any) -> None:
    job_id = client.post("/v1/jobs", json=job_body()).json()["id"]
    saved = settings.checkpoints_path / job_id / "run_0"
    saved.mkdir(parents=True)
    (saved / "state.json").write_text("{}")
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert not (settings.checkpoints_path / job_id).exists()


def test_nul_characters_never_reach_the_database(client: Any) -> None:
    """PostgreSQL cannot compare text holding NUL: refused before any query (else a 500)."""
    assert client.get("/v1/jobs/%00").status_code == 404
    assert client.get("/v1/jobs/ab%00cd/artifacts/x%00y").status_code == 404
    assert client.get("/v1/uploads/a%00b").status_code == 404
    assert client.get("/v1/jobs?status=%00").status_code == 422
    boundary = "b0undary"  # a raw body: clients percent-encode such names, attackers do not
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="da\x00ta\x07.npz"\r\n\r\n').encode() + npz_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/v1/uploads", content=body, headers={
        "content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "data.npz"


def test_staleness_is_judged_by_the_database_clock(finished_job: Any, db: Any, settings: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose clock runs an hour ahead (or behind) neither takes a live job from its
    worker nor keeps a dead one: heartbeats stamp the database's time and the sweeper
    compares in SQL with the database's time (SQLite and PostgreSQL alike)."""
    from datetime import timedelta

    from sqlalchemy import update

    from quanta_jobs import models, recovery
    from quanta_jobs.models import Job, db_now

    job = finished_job("source", dict(TINY_SOURCE), status="running")
    for skew in (timedelta(hours=1), -timedelta(hours=1)):
        monkeypatch.setattr(models, "utcnow", lambda s=skew: models.datetime.now(models.UTC) + s)
        monkeypatch.setattr(recovery, "utcnow", models.utcnow)
        db.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=db_now()))
        db.commit()
        assert recovery.recover_stale_jobs(db, settings) == []
        assert not recovery.is_stale(db, job, settings)
    db.execute(update(Job).where(Job.id == job.id)
               .values(heartbeat_at=db_now(settings.stale_after_s + 5)))
    db.commit()
    assert recovery.is_stale(db, job, settings)
    assert recovery.recover_stale_jobs(db, settings) == [job.id]
    db.refresh(job)
    assert (job.status, job.attempts) == ("queued", 1)
