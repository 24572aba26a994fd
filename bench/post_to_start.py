"""Measure the time from `POST /v1/jobs` to a worker starting the job, per broker.

    .venv/bin/python bench/post_to_start.py [--jobs 10] [--brokers redis,sqla]

For each broker it starts a real worker (`python -m worker.main`) on a temporary
SQLite database, waits until it is idle and warm, then submits jobs one at a time
(`show_only_build`, so each finishes at once) and reports created_at -> started_at.
Redis is `redis://127.0.0.1:6379/5` (a private queue, deleted afterwards); `sqla`
is the embedded SQLite broker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEC = {"source_task": "digits", "show_only_build": True, "width_multiplier": 0.0625}


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def measure(broker: str, nb_jobs: int, redis_url: str) -> list[float]:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.queue import make_celery
    from quanta_jobs.settings import Settings

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        values = {
            "database_url": f"sqlite:///{tmp / 'q.db'}",
            "broker_url": redis_url if broker == "redis" else f"sqla+sqlite:///{tmp / 'b.db'}",
            "queue": f"quanta-bench-{uuid.uuid4().hex[:8]}",
            "artifacts_dir": str(tmp / "artifacts"),
            "requeue_interval_s": "0",
        }
        settings = Settings(**values)
        settings.ensure_dirs()
        upgrade(settings.database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")}
        env |= {f"QUANTA_{k.upper()}": str(v) for k, v in values.items()}
        env |= {"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "worker.main", "--name", "bench"],
                                  env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            while " ready." not in (tmp / "worker.log").read_text(errors="replace"):
                if worker.poll() is not None:
                    raise SystemExit((tmp / "worker.log").read_text())
                time.sleep(0.2)
            latencies = []
            with TestClient(create_app(settings)) as client:
                for index in range(nb_jobs + 1):  # the first one warms the worker up
                    job = client.post("/v1/jobs", json={"kind": "source", "spec": SPEC}).json()
                    while job["status"] in ("queued", "running"):
                        time.sleep(0.02)
                        job = client.get(job["links"]["self"]).json()
                    if index:
                        latencies.append(
                            (stamp(job["started_at"]) - stamp(job["created_at"])).total_seconds())
                    time.sleep(0.5)  # an idle worker, as a real submission would find it
        finally:
            worker.terminate()
            worker.wait(30)
            log.close()
            with make_celery(settings).connection_for_write() as conn:
                conn.default_channel.queue_purge(settings.queue)
        return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--brokers", default="redis,sqla")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    report = {}
    for broker in args.brokers.split(","):
        values = sorted(measure(broker, args.jobs, args.redis))
        print(f"{broker:6s} POST->start: median {statistics.median(values) * 1000:6.1f} ms, "
              f"min {values[0] * 1000:6.1f} ms, max {values[-1] * 1000:6.1f} ms (n={len(values)})")
        report[broker] = {"median_ms": round(statistics.median(values) * 1000, 1),
                          "min_ms": round(values[0] * 1000, 1),
                          "max_ms": round(values[-1] * 1000, 1), "n": len(values)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
