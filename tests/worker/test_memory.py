"""A worker keeps at most QUANTA_DATASET_CACHE_BYTES of decoded datasets between jobs:
a real `quanta-serve` with one worker runs jobs on three uploaded datasets, each small to
send (compressed) and large once decoded, and says after each job what it keeps."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np

from tests.support.jobs import TINY_SOURCE, wait_job
from tests.support.live_service import running_service

MB = 1_000_000
BOUND = 30 * MB


def compressed_dataset(n: int, seed: int) -> bytes:
    """About n × 3 KB once decoded (32×32×3 images), a few KB compressed."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_train=np.zeros((n, 32, 32, 3), np.uint8),
                        y_train=rng.integers(0, 10, n).astype(np.uint8),
                        x_test=np.zeros((64, 32, 32, 3), np.uint8),
                        y_test=rng.integers(0, 10, 64).astype(np.uint8))
    return buffer.getvalue()


def test_a_worker_keeps_datasets_within_its_bound(tmp_path: Path) -> None:
    with running_service(tmp_path, workers=1, dataset_cache_bytes=BOUND) as live, \
            httpx.Client(base_url=live.url, timeout=60) as client:
        for seed in range(3):
            data = compressed_dataset(7000, seed)  # 21.7 MB decoded
            assert len(data) < 200_000
            upload = client.post("/v1/uploads", files={"file": (f"d{seed}.npz", data)})
            assert upload.status_code == 201, upload.text
            job = client.post("/v1/jobs", json={"kind": "source", "spec": {
                **TINY_SOURCE, "source_task": {"upload": upload.json()["id"]}}}).json()
            assert wait_job(client, job["id"], timeout=600)["status"] == "succeeded"
        kept = [(int(n), int(b)) for n, b in re.findall(
            r"decoded datasets kept: (\d+), (\d+) bytes", live.text())]
    assert len(kept) == 3, live.text()[-3000:]
    assert all(b <= BOUND for _, b in kept), kept
    assert kept[-1][0] == 1 and kept[-1][1] > 20 * MB  # the latest one stays
