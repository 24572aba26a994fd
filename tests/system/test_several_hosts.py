"""The service on several hosts that share nothing but a network (the cluster of
`tests.support.system_cluster`: the API on the server host, one worker on each of hosts
`a` and `b`, files only through the bucket).

One cluster serves the whole module, and the tests follow one story, each checking one
part of it (the fixtures run each step once, in order, whichever test asks first):

- `upload`: a dataset of a few tens of MiB uploaded through the API;
- `takeover`: a source job whose epochs each take a moment; the worker running it is
  SIGKILLed after its second epoch, the other host's worker takes the job over within
  seconds (low QUANTA_STALE_AFTER_S, QUANTA_HEARTBEAT_S and requeue interval) and resumes
  it from its checkpoint; the killed host's worker is started again;
- `study`: a study on both hosts, its source weights the job above (trained on the other
  host), its target task the upload;
- then every artifact of every job is downloaded from the API and checked.

Throughput figures are not measured here: `bench/several_hosts.py` prints them.
"""

from __future__ import annotations

import contextlib
import io
import uuid
import zipfile
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.support.s3server import S3_ENV
from tests.support.system_cluster import (
    WAIT_S,
    MiB,
    Unavailable,
    all_logs,
    cluster,
    dataset_npz,
    job_ends,
    job_reaches,
    sha256,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.timeout(1800)]

TOKEN = "several-hosts-" + uuid.uuid4().hex
#: The long job: the full-width network (its .keras is tens of MiB, the large artifact),
#: epochs of a second or so on a CPU, a checkpoint after each.
SOURCE = {"source_task": "digits", "architecture": "kes2021", "width_multiplier": 1.0,
          "nb_of_epochs": 6, "nb_of_samples": 128, "seed": 3}
KILL_AFTER_EPOCH = 2
STUDY_LAYERS = [0, 3]


# --- the story, each step once -------------------------------------------------------
@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The cluster, set up once for the module (it takes a while, and every test reads
    the one story told on it)."""
    with contextlib.ExitStack() as stack:
        try:
            live = stack.enter_context(cluster(tmp_path_factory.mktemp("hosts"), TOKEN))
        except Unavailable as exc:
            pytest.skip(str(exc))
        yield live


@pytest.fixture(scope="module")
def upload(hosts: SimpleNamespace) -> SimpleNamespace:
    """A dataset of a few tens of MiB, uploaded through the API while the workers start."""
    data = dataset_npz(32 * MiB)
    response = hosts.http.post("/v1/uploads", files={"file": ("digits-tiled.npz", data)},
                               data={"kind": "dataset"}, timeout=300)
    return SimpleNamespace(data=data, response=response)


@pytest.fixture(scope="module")
def takeover(hosts: SimpleNamespace) -> SimpleNamespace:
    """The long source job, its first worker SIGKILLed after epoch KILL_AFTER_EPOCH: the
    job as seen before the kill, once attempt 2 runs, and at its end, and its events."""
    workers = hosts.workers
    for worker in workers.values():
        worker.wait_ready()
    response = hosts.http.post("/v1/jobs", json={"kind": "source", "spec": SOURCE})
    assert response.status_code == 201, response.text
    source_id = response.json()["id"]
    names = {w.name: key for key, w in workers.items()}
    before = job_reaches(hosts, source_id, lambda j: j["status"] == "running"
                         and j["worker"] in names
                         and (j["progress"] or {}).get("epoch", 0) >= KILL_AFTER_EPOCH,
                         WAIT_S, f"running on a worker past epoch {KILL_AFTER_EPOCH}",
                         interval=0.05)
    first = workers[names[before["worker"]]]
    other = next(w for w in workers.values() if w is not first)
    first.kill()
    killed_epoch = hosts.http.get(f"/v1/jobs/{source_id}").json()["progress"]["epoch"]
    resumed = job_reaches(hosts, source_id, lambda j: j["status"] == "running"
                          and j["attempts"] == 2, WAIT_S,
                          "attempt 2 running after the SIGKILL", interval=0.05)
    first.start()  # the killed host's worker comes back (under its name) for the study
    final = job_ends(hosts, source_id)
    return SimpleNamespace(id=source_id, first=first, other=other, before=before,
                           killed_epoch=killed_epoch, resumed=resumed, final=final,
                           stream=events(hosts, source_id))


@pytest.fixture(scope="module")
def study(hosts: SimpleNamespace, upload: SimpleNamespace,
          takeover: SimpleNamespace) -> SimpleNamespace:
    """A study on both hosts: the source trained on the other host, the target the upload."""
    takeover.first.wait_ready()
    spec = {"source_task": "digits", "source_weights": {"job": takeover.id},
            "target_task": {"upload": upload.response.json()["id"]},
            "architecture": "kes2021", "width_multiplier": 1.0, "layers": STUDY_LAYERS,
            "nb_of_runs": 1, "nb_of_target_epochs": 2, "nb_of_target_samples": 64, "seed": 5}
    response = hosts.http.post("/v1/jobs", json={"kind": "study", "spec": spec})
    assert response.status_code == 201, response.text
    job = job_ends(hosts, response.json()["id"])
    children = hosts.http.get(f"/v1/jobs/{job['id']}/children").json()["items"]
    return SimpleNamespace(job=job, children=children)


def events(hosts: SimpleNamespace, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """A finished job's whole event stream (it replays from the start, then ends)."""
    from quanta_client.api import parse_sse

    with hosts.http.stream("GET", f"/v1/jobs/{job_id}/events",
                           timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, response.read()
        return [(name, data) for _, name, data in parse_sse(response.iter_lines())]


def every_job(takeover: SimpleNamespace, study: SimpleNamespace) -> list[str]:
    return [takeover.id, study.job["id"], *(c["id"] for c in study.children)]


def bucket_keys(hosts: SimpleNamespace) -> list[str]:
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=hosts.s3)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=hosts.bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


# --- the tests -----------------------------------------------------------------------
def test_an_upload_through_the_api_keeps_its_size_and_digest(upload: SimpleNamespace) -> None:
    assert upload.response.status_code == 201, upload.response.text
    answer = upload.response.json()
    assert (answer["size"], answer["sha256"]) == (len(upload.data), sha256(upload.data))


def test_the_other_host_takes_over_the_job_of_a_killed_worker(
        hosts: SimpleNamespace, takeover: SimpleNamespace) -> None:
    assert takeover.before["attempts"] == 1, (
        f"taken over before any kill (stale heartbeats?)\n{all_logs(hosts)}")
    assert takeover.resumed["worker"] == takeover.other.name, takeover.resumed
    statuses = [(b["status"], b["attempt"], b["worker"])
                for n, b in takeover.stream if n == "status"]
    assert ("running", 1, takeover.first.name) in statuses, statuses
    assert ("running", 2, takeover.other.name) in statuses, statuses


def test_the_job_taken_over_resumes_from_its_checkpoint_and_succeeds(
        hosts: SimpleNamespace, takeover: SimpleNamespace) -> None:
    final, other = takeover.final, takeover.other
    assert final["status"] == "succeeded", f"{final}\n{all_logs(hosts)}"
    assert (final["worker"], final["attempts"]) == (other.name, 2)
    # Resumed, not started again: attempt 2 trained only the epochs attempt 1 had not
    # checkpointed (its first is at most the one after the last progress seen before
    # the kill, and not the first epoch), then the rest in order.
    epochs: dict[int, list[int]] = {}
    for name, body in takeover.stream:
        if name == "epoch":
            epochs.setdefault(body["attempt"], []).append(body["epoch"])
    # An epoch's event is recorded just after its progress is committed, so the kill can
    # fall between the two: attempt 1's events are 1, 2, ... with the last perhaps missing.
    assert epochs[1] == list(range(1, len(epochs[1]) + 1)), epochs
    assert takeover.killed_epoch >= KILL_AFTER_EPOCH
    assert 1 < epochs[2][0] <= max(takeover.killed_epoch, *epochs[1]) + 1, (
        f"attempt 2 did not resume: epochs by attempt {epochs}\n{all_logs(hosts)}")
    assert epochs[2] == list(range(epochs[2][0], SOURCE["nb_of_epochs"] + 1)), epochs
    assert f"job {takeover.id}: resuming an earlier attempt" in other.text(), all_logs(hosts)


def test_a_study_runs_from_weights_trained_on_the_other_host_and_the_upload(
        hosts: SimpleNamespace, study: SimpleNamespace) -> None:
    assert study.job["status"] == "succeeded", f"{study.job}\n{all_logs(hosts)}"
    assert len(study.children) == len(STUDY_LAYERS)
    assert {c["status"] for c in study.children} == {"succeeded"}


def test_every_artifact_of_every_job_downloads_whole_and_in_its_zip(
        hosts: SimpleNamespace, takeover: SimpleNamespace, study: SimpleNamespace) -> None:
    http = hosts.http
    for job_id in every_job(takeover, study):
        listing = http.get(f"/v1/jobs/{job_id}/artifacts").json()
        assert listing["items"] and listing["partial"] is False, listing
        listed = {a["path"]: a for a in listing["items"]}
        for artifact in listing["items"]:
            got = http.get(artifact["url"], timeout=300)
            assert got.status_code == 200, (artifact, got.text[:500])
            assert (len(got.content), sha256(got.content)) == (
                artifact["size"], artifact["sha256"]), artifact
        with http.stream("GET", f"/v1/jobs/{job_id}/archive") as response:
            assert response.status_code == 200, response.read()
            archive = b"".join(response.iter_bytes())
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            assert zipped.testzip() is None
            members = {i.filename: i for i in zipped.infolist() if not i.is_dir()}
            assert set(members) == set(listed), (job_id, set(members) ^ set(listed))
            for path, artifact in listed.items():
                assert sha256(zipped.read(members[path])) == artifact["sha256"], path


def test_the_largest_artifact_downloads_by_http_range(
        hosts: SimpleNamespace, takeover: SimpleNamespace, study: SimpleNamespace) -> None:
    http = hosts.http
    size, url, digest = max((a["size"], a["url"], a["sha256"])
                            for job_id in every_job(takeover, study)
                            for a in http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"])
    assert size > 10 * MiB, (size, url)  # the full-width network's model
    whole = http.get(url, timeout=300).content
    assert sha256(whole) == digest
    start, end = size // 3, size // 3 + 3 * MiB - 1
    ranged = http.get(url, headers={"Range": f"bytes={start}-{end}"})
    assert ranged.status_code == 206, (ranged.status_code, ranged.headers)
    assert ranged.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert ranged.content == whole[start:end + 1]
    tail = http.get(url, headers={"Range": "bytes=-1000"})
    assert tail.status_code == 206 and tail.content == whole[-1000:]


def test_what_the_workers_wrote_and_the_upload_they_read_are_in_the_bucket(
        hosts: SimpleNamespace, upload: SimpleNamespace, takeover: SimpleNamespace,
        study: SimpleNamespace) -> None:
    """The hosts could reach nothing else of the API's: their files went by the bucket."""
    keys = bucket_keys(hosts)
    for job_id in (takeover.id, *(c["id"] for c in study.children)):
        assert any(job_id in key for key in keys), (job_id, keys[:50])
    upload_id = upload.response.json()["id"]
    assert any(upload_id in key for key in keys), (upload_id, keys[:50])
