"""The service on several hosts: upload and download throughput through the bucket, and
the time from a worker's SIGKILL to its job running again on the other host.

    sudo .venv/bin/python bench/several_hosts.py [--upload-mib 32]

Sets up the cluster of tests/system/test_several_hosts.py (`tests.support.system_cluster`:
network namespaces, so root; PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379, moto),
then:

1. uploads an .npz of `--upload-mib` MiB through the API (upload throughput);
2. trains the full-width network's source job, SIGKILLs its worker after epoch 2 and times
   until attempt 2 runs on the other host (takeover), then waits for its end;
3. downloads the job's largest artifact (its model, tens of MiB) from the API, which reads
   it from the bucket (download throughput).

Prints one line starting `SEVERAL-HOSTS:`. The correctness of all this is the test's
business; this script only measures, and ends everything it started.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (after the repository is on the path)
from tests.support.system_cluster import (
    WAIT_S,
    MiB,
    cluster,
    dataset_npz,
    job_ends,
    job_reaches,
)

SOURCE = {"source_task": "digits", "architecture": "kes2021", "width_multiplier": 1.0,
          "nb_of_epochs": 6, "nb_of_samples": 128, "seed": 3}
KILL_AFTER_EPOCH = 2


def mib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-mib", type=int, default=32)
    args = parser.parse_args()
    figures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, \
            cluster(Path(tmp), "bench-" + uuid.uuid4().hex) as hosts:
        http, workers = hosts.http, hosts.workers
        data = dataset_npz(args.upload_mib * MiB)
        began = time.monotonic()
        response = http.post("/v1/uploads", files={"file": ("digits-tiled.npz", data)},
                             data={"kind": "dataset"}, timeout=300)
        took = time.monotonic() - began
        response.raise_for_status()
        figures.append(f"upload {len(data) / MiB:.1f} MiB in {took:.2f}s = "
                       f"{mib_per_s(len(data), took):.0f} MiB/s")

        for worker in workers.values():
            worker.wait_ready()
        response = http.post("/v1/jobs", json={"kind": "source", "spec": SOURCE})
        response.raise_for_status()
        job_id = response.json()["id"]
        names = {w.name: key for key, w in workers.items()}
        job = job_reaches(hosts, job_id, lambda j: j["status"] == "running"
                          and j["worker"] in names
                          and (j["progress"] or {}).get("epoch", 0) >= KILL_AFTER_EPOCH,
                          WAIT_S, f"running past epoch {KILL_AFTER_EPOCH}", interval=0.05)
        workers[names[job["worker"]]].kill()
        killed_at = time.monotonic()
        job = job_reaches(hosts, job_id, lambda j: j["status"] == "running"
                          and j["attempts"] == 2, 120, "attempt 2 running", interval=0.05)
        figures.append(f"SIGKILL to attempt 2 running on {job['worker']} "
                       f"{time.monotonic() - killed_at:.1f}s")
        job = job_ends(hosts, job_id)
        if job["status"] != "succeeded":
            sys.exit(f"the source job ended {job['status']}: {job.get('error')}")

        items = http.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        largest = max(items, key=lambda a: a["size"])
        began = time.monotonic()
        got = http.get(largest["url"], timeout=300)
        took = time.monotonic() - began
        got.raise_for_status()
        figures.append(f"download {largest['size'] / MiB:.1f} MiB in {took:.2f}s = "
                       f"{mib_per_s(largest['size'], took):.0f} MiB/s")
    print("SEVERAL-HOSTS: " + "; ".join(figures), flush=True)


if __name__ == "__main__":
    main()
