"""The service on several hosts that share nothing but a network (`tests.support.netns`),
for tests/system/test_several_hosts.py and bench/several_hosts.py.

The server host (the root namespace, the bridge's address) runs the API (no worker of
its own), PostgreSQL and Redis behind relays, and moto's S3 server; hosts `a` and `b`
each run one worker. Every process keeps its files in a folder only its host sees, so
whatever a worker needs from the API and whatever the API serves from a worker can only
travel through the bucket (`QUANTA_STORE_URL`). `cluster` ends everything it started,
and drops the database, even on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np

from tests.support import REPO
from tests.support.jobs import TERMINAL, wait_job
from tests.support.live_service import wait_http
from tests.support.net import port_open
from tests.support.netns import Host, Hosts, netns_unavailable
from tests.support.processes import service_env
from tests.support.s3server import S3_ENV, make_bucket, moto_missing, moto_server
from tests.support.waiting import wait_until

#: A Redis database no other test uses (they take 5, 6 and 7); each run has its own queue.
REDIS_DB = 9
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
#: Generous waits: on a machine other work keeps busy an epoch can take half a minute.
WAIT_S = 480
#: Takeover within seconds: beats every 0.5 s, stale after 12 s, swept every second. A
#: worker that could not stamp its beat for 8 s stops the job itself (less than 12 s).
#: Not lower: an attempt beats only once its folders are ready, and on a loaded machine
#: creating its S3 client and fetching the checkpoint to resume from takes seconds.
FAST = {"heartbeat_s": 0.5, "stale_after_s": 12, "heartbeat_loss_s": 8,
        "requeue_interval_s": 1, "cancel_poll_s": 0.2, "checkpoint_interval_s": 0}
MiB = 1024 * 1024


class Unavailable(Exception):
    """What the cluster needs is missing on this machine (a test skips on it)."""


def unavailable() -> str | None:
    """Why the cluster cannot run here, or None."""
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
        raise Unavailable(f"cannot create a PostgreSQL database: {exc}") from exc
    try:
        yield
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def forget_queue(queue: str) -> None:
    """Remove this run's queue and its unacknowledged messages from Redis (the database
    number is ours, but another run may share it: only our keys go)."""
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
    logging to a file; started again under the same name by `start`."""

    def __init__(self, host: Host, env: dict[str, str], log: Path) -> None:
        self.host, self.env, self.log = host, env, log
        self.name = f"worker@host-{host.name}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        """Start the worker (again): a marker in the log tells this start's lines apart."""
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
        """Until this start's Celery worker says it is ready; at once, with its log, if
        it exited first."""
        marker = f"===== start {self.starts} ====="

        def ready() -> bool:
            if " ready." in self.text().rpartition(marker)[2]:
                return True
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n"
                                     f"{self.text()[-4000:]}")
            return False

        try:
            wait_until(ready, timeout, f"{self.name} saying it is ready", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.text()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL the worker process itself (`Host.argv` execs into it: its pid is ours)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def all_logs(cluster: SimpleNamespace, tail: int = 3000) -> str:
    """The end of every log of the cluster (API, workers, S3), for a failure's message."""
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
                     for p in sorted(cluster.logs.glob("*.log")))


@contextlib.contextmanager
def cluster(root: Path, token: str) -> Iterator[SimpleNamespace]:
    """The API on the server host and one worker on each of hosts `a` and `b`, the API
    answering; `http` is an httpx.Client on it with `token`. Raises `Unavailable` when
    this machine cannot run it."""
    reason = unavailable()
    if reason:
        raise Unavailable(reason)
    run = uuid.uuid4().hex[:8]
    database, queue, bucket = f"quanta_hosts_{run}", f"quanta-hosts-{run}", f"quanta-{run}"
    logs = root / "logs"
    logs.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        stack.callback(forget_queue, queue)
        stack.enter_context(fresh_database(database))
        hosts = stack.enter_context(Hosts(root, ["a", "b"]))
        server = hosts.server_ip
        pg_port = hosts.forward(5432, listen_port=hosts.free_port())
        redis_port = hosts.forward(6379, listen_port=hosts.free_port())
        s3 = stack.enter_context(moto_server(server, log=logs / "moto.log"))
        stack.callback(hosts.close)  # the API and the workers stop before the S3 server
        make_bucket(s3, bucket)
        shared = {"queue": queue, "store_url": f"s3://{bucket}/quanta",
                  "s3_endpoint_url": s3, **FAST}

        def folders(base: Path) -> dict[str, Path]:
            made = {f"{area}_dir": base / area for area in
                    ("artifacts", "uploads", "checkpoints", "data")}
            made["store_cache_dir"] = base / "cache"
            for path in made.values():
                path.mkdir(parents=True)
            return made

        api_env = {**service_env(
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
            api_tokens=f"tester:{token}", **folders(hosts.server_folder), **shared),
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
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}))
        wait_http(f"{url}/healthz", api, WAIT_S, "the API on the server host answering",
                  logs / "api.log")
        yield SimpleNamespace(hosts=hosts, http=http, url=url, workers=workers, logs=logs,
                              s3=s3, bucket=bucket)


def job_reaches(cluster: SimpleNamespace, job_id: str, until: Callable[[dict[str, Any]], bool],
                timeout: float, what: str, interval: float = 0.2) -> dict[str, Any]:
    """GET the job until `until(job)` (the job); fails at once if it ends first, and with
    every log either way: a job that does not get there on several hosts needs them."""
    seen: dict[str, Any] = {}

    def there() -> dict[str, Any] | None:
        seen.clear()
        seen.update(cluster.http.get(f"/v1/jobs/{job_id}").json())
        if until(seen):
            return dict(seen)
        if seen.get("status") in TERMINAL:
            raise AssertionError(f"job {job_id} ended {seen['status']} before {what}: "
                                 f"{seen.get('error')}\n{all_logs(cluster)}")
        return None

    try:
        return wait_until(there, timeout, f"job {job_id}: {what}", interval=interval)
    except AssertionError as exc:
        if seen.get("status") in TERMINAL:
            raise
        raise AssertionError(f"{exc}; last seen {seen}\n{all_logs(cluster)}") from None


def job_ends(cluster: SimpleNamespace, job_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
    """`wait_job` on the cluster's API, with every log in the message if it does not end."""
    try:
        return wait_job(cluster.http, job_id, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{all_logs(cluster)}") from None


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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
