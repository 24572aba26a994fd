"""The service on several hosts that share nothing but a network (`tests.support.netns`).

The server host (the root namespace, the bridge's address) runs the API (no worker of
its own), PostgreSQL and Redis behind relays, and moto's S3 server; hosts `a` and `b`
each run one worker. Every process keeps its files in a folder only its host sees, so
whatever a worker needs from the API (an upload, another job's weights, the checkpoints
of an attempt that died on the other host) and whatever the API serves from a worker
(every artifact) can only travel through the bucket (`QUANTA_STORE_URL`).

The test, in order:

1. uploads a dataset of a few tens of MiB through the API (its throughput is printed);
2. trains a source job whose epochs each take a moment, SIGKILLs the worker running it
   after its second epoch, and checks the other host's worker takes the job over within
   seconds (low QUANTA_STALE_AFTER_S, QUANTA_HEARTBEAT_S and requeue interval) and
   resumes it from its checkpoint (attempt 2, no epoch of attempt 1 trained again);
3. starts the killed host's worker again and runs a study on both hosts, its source
   weights the job of step 2 (trained on the other host) and its target task the upload;
4. downloads every artifact of every job from the API and checks its SHA-256, one of
   them also by an HTTP range, and each job's zip archive, member by member.

The figures (upload and download throughput, time from the kill to the resumed attempt
running on the other host) are printed on one line starting `SEVERAL-HOSTS:`
(`pytest -s`). Everything started is ended, and the database dropped, even on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import REPO
from tests.support.net import port_open
from tests.support.netns import Host, Hosts, netns_unavailable
from tests.support.processes import service_env
from tests.support.s3server import S3_ENV, make_bucket, moto_missing, moto_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.timeout(1800)]

#: A Redis database no other test uses (they take 5, 6 and 7), and a queue of this run's.
REDIS_DB = 9
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
TOKEN = "several-hosts-" + uuid.uuid4().hex
#: Generous waits: on a machine other work keeps busy an epoch can take half a minute.
WAIT_S = 480
#: Takeover within seconds: beats every 0.5 s, stale after 12 s, swept every second. A
#: worker that could not stamp its beat for 8 s stops the job itself (less than 12 s).
#: Not lower: an attempt beats only once its folders are ready, and on a loaded machine
#: creating its S3 client and fetching the checkpoint to resume from takes seconds.
FAST = {"heartbeat_s": 0.5, "stale_after_s": 12, "heartbeat_loss_s": 8,
        "requeue_interval_s": 1, "cancel_poll_s": 0.2, "checkpoint_interval_s": 0}
#: The long job: the full-width network (its .keras is tens of MiB, the large artifact),
#: epochs of a second or so on a CPU, a checkpoint after each.
SOURCE = {"source_task": "digits", "architecture": "kes2021", "width_multiplier": 1.0,
          "nb_of_epochs": 6, "nb_of_samples": 128, "seed": 3}
KILL_AFTER_EPOCH = 2
STUDY_LAYERS = [0, 3]
TERMINAL = ("succeeded", "failed", "cancelled")
MiB = 1024 * 1024


# --- the cluster ---------------------------------------------------------------------
def _skip_reason() -> str | None:
    reason = netns_unavailable() or moto_missing()
    if reason:
        return reason
    if not port_open("127.0.0.1", 6379):
        return "Redis is not reachable on 127.0.0.1:6379"
    if not port_open("127.0.0.1", 5432):
        return "PostgreSQL is not reachable on 127.0.0.1:5432"
    return None


@contextlib.contextmanager
def fresh_database(name: str) -> Iterator[None]:
    """A new, empty PostgreSQL database for this run, dropped afterwards (connections
    left over by a killed process included)."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.skip(f"cannot create a PostgreSQL database: {exc}")
    try:
        yield
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def forget_queue(queue: str) -> None:
    """Remove this run's queue and its unacknowledged messages from Redis (the database
    number is ours, but another run of this test may share it: only our keys go)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        for tag, payload in client.hscan_iter("unacked"):
            if queue.encode() in payload:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        # Kombu's bookkeeping of the workers' control queue, once no other run's queue
        # is left in the database.
        if not [k for k in client.scan_iter(match="_kombu.binding.*")
                if not k.endswith(b".celery.pidbox")]:
            client.delete("_kombu.binding_deadlines", "_kombu.binding.celery.pidbox")
    finally:
        client.close()


class Worker:
    """One `python -m worker.main` on a host (`worker.main`: solo pool, concurrency 1),
    logging to a file; started again under the same name by `restart`."""

    def __init__(self, host: Host, env: dict[str, str], log: Path) -> None:
        self.host, self.env, self.log = host, env, log
        self.name = f"worker@host-{host.name}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
            out.flush()
            self.process = self.host.popen(
                [sys.executable, "-m", "worker.main", "--name", self.name, "--loglevel",
                 "INFO"], env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = WAIT_S) -> None:
        """Until this start's Celery worker says it is ready."""
        marker = f"===== start {self.starts} ====="
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.text().rpartition(marker)[2]:
                return
            assert self.process is not None
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not start:\n{self.text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the worker process itself (`Host.argv` execs into it: its pid is ours)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SimpleNamespace]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    run = uuid.uuid4().hex[:8]
    database, queue, bucket = f"quanta_hosts_{run}", f"quanta-hosts-{run}", f"quanta-{run}"
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(forget_queue, queue)
        stack.enter_context(fresh_database(database))
        hosts = stack.enter_context(Hosts(tmp_path, ["a", "b"]))
        server = hosts.server_ip
        pg_port = hosts.forward(5432, listen_port=hosts.free_port())
        redis_port = hosts.forward(6379, listen_port=hosts.free_port())
        s3 = stack.enter_context(moto_server(server, log=logs / "moto.log"))
        stack.callback(hosts.close)  # the API and the workers stop before the S3 server
        make_bucket(s3, bucket)
        shared = {"queue": queue, "store_url": f"s3://{bucket}/quanta",
                  "s3_endpoint_url": s3, **FAST}

        def folders(root: Path) -> dict[str, Path]:
            made = {f"{area}_dir": root / area for area in
                    ("artifacts", "uploads", "checkpoints", "data")}
            made["store_cache_dir"] = root / "cache"
            for path in made.values():
                path.mkdir(parents=True)
            return made

        api_env = {**service_env(
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
            api_tokens=f"tester:{TOKEN}", **folders(hosts.server_folder), **shared),
            **S3_ENV}
        port = hosts.free_port()
        api_log = stack.enter_context(open(logs / "api.log", "wb"))
        api = hosts.serve([sys.executable, "-m", "api.serve", "--host", server, "--port",
                           str(port), "--workers", "0", "--stop-timeout", "10",
                           "--log-level", "WARNING"],
                          env=api_env, stdout=api_log, stderr=subprocess.STDOUT)
        workers = {}
        for name, host in hosts.hosts.items():
            env = {**service_env(
                database_url=f"postgresql+psycopg://postgres@{server}:{pg_port}/{database}",
                broker_url=f"redis://{server}:{redis_port}/{REDIS_DB}",
                **folders(host.folder), **shared), **S3_ENV}
            workers[name] = Worker(host, env, logs / f"worker-{name}.log")
        url = f"http://{server}:{port}"
        http = stack.enter_context(httpx.Client(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}))
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if http.get("/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert api.poll() is None and time.monotonic() < deadline, \
                (logs / "api.log").read_text()[-4000:]
            time.sleep(0.3)
        yield SimpleNamespace(hosts=hosts, http=http, url=url, workers=workers, logs=logs,
                              s3=s3, bucket=bucket)


def all_logs(cluster: SimpleNamespace, tail: int = 3000) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
                     for p in sorted(cluster.logs.glob("*.log")))


# --- helpers -------------------------------------------------------------------------
def wait_job(cluster: SimpleNamespace, job_id: str, until: Any, timeout: float,
             poll: float = 0.2) -> dict[str, Any]:
    """GET the job until `until(job)`; fails with the logs after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = cluster.http.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if job.get("status") in TERMINAL:
            raise AssertionError(f"job {job_id} ended {job['status']}: {job.get('error')}\n"
                                 f"{all_logs(cluster)}")
        time.sleep(poll)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s: {job}\n"
                         f"{all_logs(cluster)}")


def wait_end(cluster: SimpleNamespace, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = cluster.http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s\n"
                         f"{all_logs(cluster)}")


def events(cluster: SimpleNamespace, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """A finished job's whole event stream (it replays from the start, then ends)."""
    from quanta_client.api import parse_sse

    with cluster.http.stream("GET", f"/v1/jobs/{job_id}/events",
                             timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, response.read()
        return [(name, data) for _, name, data in parse_sse(response.iter_lines())]


def dataset_npz(size: int) -> bytes:
    """An .npz of `size` bytes or so: sklearn's digits images (as `quanta.datasets` makes
    them, 8x8 uint8) repeated, so that the few samples a job keeps are real ones."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    repeat = max(1, size // (images.nbytes + labels.nbytes))
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.tile(images, (repeat, 1, 1)), y_train=np.tile(labels, repeat),
             x_test=images[-357:], y_test=labels[-357:])
    return buffer.getvalue()


def bucket_keys(cluster: SimpleNamespace) -> list[str]:
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=cluster.s3)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / max(seconds, 1e-9)


# --- the test ------------------------------------------------------------------------
def test_a_job_survives_its_host_and_the_files_travel_through_the_bucket(
        cluster: SimpleNamespace) -> None:
    http, workers = cluster.http, cluster.workers
    figures: dict[str, str] = {}

    # 1. A dataset of a few tens of MiB, uploaded through the API while the workers start.
    data = dataset_npz(32 * MiB)
    began = time.monotonic()
    response = http.post("/v1/uploads", files={"file": ("digits-tiled.npz", data)},
                         data={"kind": "dataset"}, timeout=300)
    took = time.monotonic() - began
    assert response.status_code == 201, response.text
    upload = response.json()
    assert (upload["size"], upload["sha256"]) == (len(data), sha256(data))
    figures["upload"] = (f"upload {len(data) / MiB:.1f} MiB in {took:.2f}s = "
                         f"{mib_per_s(len(data), took):.0f} MiB/s")
    for worker in workers.values():
        worker.wait_ready()

    # 2. The long source job; its worker is SIGKILLed after epoch KILL_AFTER_EPOCH.
    response = http.post("/v1/jobs", json={"kind": "source", "spec": SOURCE})
    assert response.status_code == 201, response.text
    source_id = response.json()["id"]
    names = {w.name: key for key, w in workers.items()}
    job = wait_job(cluster, source_id, lambda j: j["status"] == "running"
                   and j["worker"] in names
                   and (j["progress"] or {}).get("epoch", 0) >= KILL_AFTER_EPOCH,
                   timeout=WAIT_S, poll=0.05)
    first = workers[names[job["worker"]]]
    other = next(w for w in workers.values() if w is not first)
    assert job["attempts"] == 1, (
        f"taken over before any kill (stale heartbeats?)\n{all_logs(cluster)}")
    first.kill()
    killed_at = time.monotonic()
    killed_epoch = cluster.http.get(f"/v1/jobs/{source_id}").json()["progress"]["epoch"]
    job = wait_job(cluster, source_id, lambda j: j["status"] == "running"
                   and j["attempts"] == 2, timeout=120, poll=0.05)
    takeover = time.monotonic() - killed_at
    assert job["worker"] == other.name, job
    figures["takeover"] = (f"SIGKILL to attempt 2 running on host-{other.host.name} "
                           f"{takeover:.1f}s")
    first.start()  # the killed host's worker comes back (under its name) for the study
    job = wait_end(cluster, source_id, timeout=WAIT_S)
    assert job["status"] == "succeeded", f"{job}\n{all_logs(cluster)}"
    assert (job["worker"], job["attempts"]) == (other.name, 2)
    # Resumed, not started again: attempt 2 trained only the epochs attempt 1 had not
    # checkpointed (its first is at most the one after the last progress seen before
    # the kill, and not the first epoch), then the rest in order.
    stream = events(cluster, source_id)
    epochs: dict[int, list[int]] = {}
    for name, body in stream:
        if name == "epoch":
            epochs.setdefault(body["attempt"], []).append(body["epoch"])
    # An epoch's event is recorded just after its progress is committed, so the kill can
    # fall between the two: attempt 1's events are 1, 2, ... with the last perhaps missing.
    assert epochs[1] == list(range(1, len(epochs[1]) + 1)), epochs
    assert killed_epoch >= KILL_AFTER_EPOCH
    resumed = f"job {source_id}: resuming an earlier attempt"
    assert 1 < epochs[2][0] <= max(killed_epoch, *epochs[1]) + 1, (
        f"attempt 2 did not resume: epochs by attempt {epochs}\n{all_logs(cluster)}")
    assert epochs[2] == list(range(epochs[2][0], SOURCE["nb_of_epochs"] + 1)), epochs
    assert resumed in other.text(), all_logs(cluster)
    statuses = [(b["status"], b["attempt"], b["worker"]) for n, b in stream if n == "status"]
    assert ("running", 1, first.name) in statuses and ("running", 2, other.name) in statuses
    figures["resumed"] = (f"killed after epoch {killed_epoch}, attempt 2 began at epoch "
                          f"{epochs[2][0]}")

    # 3. A study on both hosts: the source from the other host, the target the upload.
    first.wait_ready()
    spec = {"source_task": "digits", "source_weights": {"job": source_id},
            "target_task": {"upload": upload["id"]}, "architecture": "kes2021",
            "width_multiplier": 1.0, "layers": STUDY_LAYERS, "nb_of_runs": 1,
            "nb_of_target_epochs": 2, "nb_of_target_samples": 64, "seed": 5}
    response = http.post("/v1/jobs", json={"kind": "study", "spec": spec})
    assert response.status_code == 201, response.text
    study = wait_end(cluster, response.json()["id"], timeout=WAIT_S)
    assert study["status"] == "succeeded", f"{study}\n{all_logs(cluster)}"
    children = http.get(f"/v1/jobs/{study['id']}/children").json()["items"]
    assert len(children) == len(STUDY_LAYERS)
    assert {c["status"] for c in children} == {"succeeded"}
    figures["study"] = "study children on " + ", ".join(
        sorted(c["worker"].rpartition("@")[2] for c in children))

    # 4. Every file of every job, from the API: whole, by range, and zipped.
    largest: tuple[int, str, str, float] = (0, "", "", 0.0)
    for job_id in (source_id, study["id"], *(c["id"] for c in children)):
        listing = http.get(f"/v1/jobs/{job_id}/artifacts").json()
        assert listing["items"] and listing["partial"] is False, listing
        listed = {a["path"]: a for a in listing["items"]}
        for artifact in listing["items"]:
            began = time.monotonic()
            got = http.get(artifact["url"], timeout=300)
            took = time.monotonic() - began
            assert got.status_code == 200, (artifact, got.text[:500])
            assert (len(got.content), sha256(got.content)) == (
                artifact["size"], artifact["sha256"]), artifact
            largest = max(largest, (artifact["size"], artifact["url"], artifact["sha256"], took))
        with http.stream("GET", f"/v1/jobs/{job_id}/archive") as response:
            assert response.status_code == 200, response.read()
            archive = b"".join(response.iter_bytes())
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            assert zipped.testzip() is None
            members = {i.filename: i for i in zipped.infolist() if not i.is_dir()}
            assert set(members) == set(listed), (job_id, set(members) ^ set(listed))
            for path, artifact in listed.items():
                assert sha256(zipped.read(members[path])) == artifact["sha256"], path
    size, url, digest, took = largest  # its first download
    assert size > 10 * MiB, largest  # the full-width network's model
    whole = http.get(url, timeout=300).content
    assert sha256(whole) == digest
    figures["download"] = (f"download {size / MiB:.1f} MiB in {took:.2f}s = "
                           f"{mib_per_s(size, took):.0f} MiB/s")
    start, end = size // 3, size // 3 + 3 * MiB - 1
    ranged = http.get(url, headers={"Range": f"bytes={start}-{end}"})
    assert ranged.status_code == 206, (ranged.status_code, ranged.headers)
    assert ranged.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert ranged.content == whole[start:end + 1]
    tail = http.get(url, headers={"Range": "bytes=-1000"})
    assert tail.status_code == 206 and tail.content == whole[-1000:]

    # What the workers wrote, and the upload they read, were in the bucket: the hosts
    # could reach nothing else of the API's.
    keys = bucket_keys(cluster)
    for job_id in (source_id, *(c["id"] for c in children)):
        assert any(job_id in key for key in keys), (job_id, keys[:50])
    assert any(upload["id"] in key for key in keys), (upload["id"], keys[:50])

    print("\nSEVERAL-HOSTS: " + "; ".join(figures[k] for k in (
        "upload", "download", "takeover", "resumed", "study")), flush=True)
