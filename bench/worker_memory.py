"""What a worker's memory holds after jobs on uploaded datasets that are cheap to send and
large once decoded: RSS of a real `quanta-serve` worker after each job, with its cache of
decoded datasets bounded in bytes (QUANTA_DATASET_CACHE_BYTES) and unbounded in bytes
(eight datasets, whatever their size: the service before the bound existed).

    .venv/bin/python bench/worker_memory.py [--datasets 3] [--mib 256] [--json out.json]

Each dataset is an `.npz` of zeros compressed to a few hundred KB that declares `--mib`
MiB of images; each job is a one-epoch source training on 64 of its images (the worker
decodes the whole file all the same). Figures: RSS (MiB) after each job ends, and the
process's peak (VmHWM).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
UNBOUNDED = 1 << 50


def dataset(mib: int, seed: int) -> bytes:
    n = mib * 2**20 // 3072
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_train=np.zeros((n, 32, 32, 3), np.uint8),
                        y_train=rng.integers(0, 10, n).astype(np.uint8),
                        x_test=np.zeros((64, 32, 32, 3), np.uint8),
                        y_test=rng.integers(0, 10, 64).astype(np.uint8))
    return buffer.getvalue()


def status(pid: int, field: str) -> int:
    """A /proc/PID/status field, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(field)


def worker_pid(serve: int) -> int:
    for child in Path(f"/proc/{serve}/task/{serve}/children").read_text().split():
        if b"worker.main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise RuntimeError("no worker process")


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def measure(cache_bytes: int, files: list[bytes]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")}
        env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   QUANTA_DATABASE_URL=f"sqlite:///{folder}/q.db",
                   QUANTA_BROKER_URL=f"sqla+sqlite:///{folder}/b.db",
                   QUANTA_ARTIFACTS_DIR=f"{folder}/artifacts",
                   QUANTA_DATASET_CACHE_BYTES=str(cache_bytes))
        serve = subprocess.Popen([sys.executable, "-m", "api.serve", "--port", str(port)],
                                 env=env, cwd=folder, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                deadline = time.monotonic() + 300
                while not ready(client):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the service did not get ready")
                    time.sleep(0.5)
                after = []
                for i, data in enumerate(files):
                    upload = client.post("/v1/uploads", files={"file": (f"d{i}.npz", data)})
                    job = client.post("/v1/jobs", json={"kind": "source", "spec": {
                        "source_task": {"upload": upload.json()["id"]}, "nb_of_epochs": 1,
                        "nb_of_samples": 64, "width_multiplier": 0.0625, "seed": 1}}).json()
                    while client.get(f"/v1/jobs/{job['id']}").json()["status"] in (
                            "queued", "running"):
                        time.sleep(0.5)
                    after.append(status(worker_pid(serve.pid), "VmRSS"))
                pid = worker_pid(serve.pid)
                return {"rss_after_each_job_mib": after, "peak_mib": status(pid, "VmHWM")}
        finally:
            serve.terminate()
            serve.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = [dataset(args.mib, seed) for seed in range(args.datasets)]
    print(f"{args.datasets} uploads of {len(files[0]) // 1024} KB declaring {args.mib} MiB each")
    results = {}
    for name, bound in (("unbounded in bytes (8 datasets)", UNBOUNDED),
                        ("QUANTA_DATASET_CACHE_BYTES=0", 0),
                        ("QUANTA_DATASET_CACHE_BYTES=1 GiB (default)", 2**30)):
        results[name] = measure(bound, files)
        print(f"{name}: {results[name]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
