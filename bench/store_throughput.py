"""Artifact store throughput, a local folder against an S3 bucket, through the real API.

    .venv/bin/python bench/store_throughput.py [--mib 256] [--pairs 2] [--json out.json]

Moving a large file costs the same three things whichever backend keeps it: the API
receiving an upload, the API serving a job's file, and a worker on another host fetching
a file into its cache. This measures each with the local folder and with a bucket, side by
side in one sitting, so that their ratio says what the bucket costs on top of the disk.

For each backend, in its own temporary folder: (s3 only) moto's standalone server as its
own process and a fresh bucket; the API alone (`python -m api.serve --workers 0`) on its
own SQLite database and folders, with `QUANTA_STORE_URL` and `QUANTA_S3_ENDPOINT_URL`
for s3. Then, on one valid `.npz` dataset of `--mib` MiB (random images, so nothing
compresses):

1. upload: `POST /v1/uploads`, httpx streaming the file from disk;
2. store put: the file put into the artifacts store under `{job id}/big.npz` by
   `store_from_settings(settings, "artifacts")`, as a worker records a job's file, for a
   succeeded job written straight into the API's database (there is no download route
   for uploads); then `GET /v1/jobs/{id}/artifacts/big.npz` streamed whole (bytes counted,
   SHA-256 checked) and a ranged GET of the last 16 MiB (checked against the file's tail);
3. cache fetch: `StoreCache.path(key, sha256)` into an empty cache folder, what a worker
   on another host does before it reads a file. A worker with the local store reads the
   store's file in place and copies nothing; the local figure is therefore a copy asked
   for with `copy_local=True` (the in-place time is reported too).

The backends alternate `--pairs` times (local, s3, then s3, local, ...: a drift of the
machine's load falls on both). Every figure is MiB/s of the file's size over the wall
time of the step; the table shows the median over the pairs with each run's value, and
the s3/local ratio of the medians. The client, the API and moto share the machine's CPUs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.study_wall_time import free_port, peak_rss_mib  # noqa: E402

MiB = 1024 * 1024
RANGE_MIB = 16
BACKENDS = ("local", "s3")
#: Figures in the order of the table: (key, label).
FIGURES = (
    ("upload", "upload, POST /v1/uploads"),
    ("store_put", "store put (artifacts)"),
    ("download", "GET artifact, whole, streamed"),
    ("range", f"GET artifact, last {RANGE_MIB} MiB (Range)"),
    ("cache_fetch", "StoreCache.path, empty cache"),
)


def write_dataset(path: Path, mib: float) -> tuple[int, str]:
    """A valid dataset `.npz` of about `mib` MiB (CIFAR-shaped uint8 images, uint8 labels,
    80/20 split) of random bytes; returns its size and SHA-256."""
    per_sample = 32 * 32 * 3 + 1
    samples = max(10, int(mib * MiB) // per_sample)
    train = samples * 4 // 5
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return np.frombuffer(rng.bytes(n * 3072), dtype=np.uint8).reshape(n, 32, 32, 3)

    np.savez(path, x_train=images(train), y_train=rng.integers(0, 10, train, dtype=np.uint8),
             x_test=images(samples - train),
             y_test=rng.integers(0, 10, samples - train, dtype=np.uint8))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


def tail_sha256(path: Path, size: int, length: int) -> str:
    with open(path, "rb") as f:
        f.seek(size - length)
        return hashlib.sha256(f.read()).hexdigest()


@contextmanager
def s3_server(tmp: Path) -> Iterator[tuple[str, str]]:
    """moto's standalone server (its own process) with a fresh bucket: (endpoint, bucket)."""
    from tests.support.s3server import make_bucket, moto_missing, moto_server

    missing = moto_missing()
    if missing:
        raise SystemExit(missing)
    with moto_server(log=tmp / "moto.log") as endpoint:
        bucket = f"bench-{os.getpid()}-{time.monotonic_ns()}"
        make_bucket(endpoint, bucket)
        yield endpoint, bucket


@contextmanager
def api_server(env: dict[str, str], tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m api.serve --workers 0` in its own session; yields its base URL once
    `/healthz` answers, and stops it (and anything it started) at the end."""
    port = free_port()
    log = open(tmp / "api.log", "wb")  # noqa: SIM115 (closed below)
    api = subprocess.Popen(
        [sys.executable, "-m", "api.serve", "--workers", "0", "--port", str(port),
         "--log-level", "WARNING"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None:
                raise SystemExit(f"the API did not start; see {tmp / 'api.log'}:\n"
                                 + (tmp / "api.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise SystemExit("the API did not answer /healthz within 60 s")
            time.sleep(0.05)
        yield base, api
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGINT)
            try:
                api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait(timeout=10)
        log.close()


def api_peak_rss(api: subprocess.Popen[bytes]) -> float | None:
    """The largest peak RSS of the API process and its children (uvicorn may be either)."""
    pids = [api.pid] + [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(api.pid)], capture_output=True, text=True).stdout.split()]
    peaks = [p for p in (peak_rss_mib(pid) for pid in pids) if p is not None]
    return max(peaks) if peaks else None


def finished_job(database_url: str) -> str:
    """A succeeded job, inserted as a worker leaves one (queued -> running -> succeeded)."""
    from quanta_jobs import crud
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.job_state import JobStatus, transition

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            job = crud.create_job(session, "source", {
                "source_task": "digits", "nb_of_epochs": 1, "width_multiplier": 0.0625})
            session.commit()
            transition(session, job, JobStatus.RUNNING, worker="bench@store")
            session.commit()
            return job.id
    finally:
        engine.dispose()


def record_artifact(database_url: str, job_id: str, path: str, size: int, sha256: str) -> None:
    from quanta_jobs import crud
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.job_state import JobStatus, transition

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            job = crud.get_job(session, job_id)
            crud.replace_artifacts(session, job_id, [crud.ArtifactInfo(path, size, sha256)])
            transition(session, job, JobStatus.SUCCEEDED)
            session.commit()
    finally:
        engine.dispose()


def one_backend(backend: str, data: Path, size: int, sha256: str, tail: str) -> dict[str, Any]:
    """Every figure of one backend, each process and folder its own and removed after."""
    from quanta_jobs.settings import Settings
    from quanta_jobs.store import StoreCache, store_from_settings
    from tests.support.s3server import S3_ENV

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"quanta-store-bench-{backend}-") as folder:
        tmp = Path(folder)
        database_url = f"sqlite:///{tmp / 'q.db'}"
        config = {
            "database_url": database_url,
            "broker_url": f"sqla+sqlite:///{tmp / 'b.db'}",
            "artifacts_dir": str(tmp / "api" / "artifacts"),
            "uploads_dir": str(tmp / "api" / "uploads"),
            "checkpoints_dir": str(tmp / "api" / "checkpoints"),
            "store_cache_dir": str(tmp / "api" / "cache"),
            "requeue_interval_s": "0",
            "max_upload_bytes": str(size + 64 * MiB),
            "max_dataset_bytes": str(size + 64 * MiB),
        }
        with s3_or_nothing(backend, tmp) as s3:
            env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")}
            if s3 is not None:
                endpoint, bucket = s3
                config |= {"store_url": f"s3://{bucket}/bench", "s3_endpoint_url": endpoint}
                env |= S3_ENV
                os.environ.update(S3_ENV)  # this process's boto3 client reads them too
            env |= {f"QUANTA_{k.upper()}": v for k, v in config.items()}
            settings = Settings(**config)  # type: ignore[arg-type]
            with api_server(env, tmp) as (base, api), httpx.Client(
                    base_url=base, timeout=httpx.Timeout(300, connect=10)) as client:
                start = time.perf_counter()
                with open(data, "rb") as f:  # httpx reads a file object in chunks as it sends
                    answer = client.post("/v1/uploads", files={
                        "file": ("bench.npz", f, "application/octet-stream")})
                seconds["upload"] = time.perf_counter() - start
                if answer.status_code != 201:
                    raise SystemExit(f"upload refused: {answer.status_code} {answer.text}")
                upload = answer.json()
                assert upload["size"] == size and upload["sha256"] == sha256, upload

                job_id = finished_job(database_url)
                store = store_from_settings(settings, "artifacts")
                key = f"{job_id}/big.npz"
                start = time.perf_counter()
                stored = store.put(key, data)
                seconds["store_put"] = time.perf_counter() - start
                assert stored == (size, sha256), stored
                record_artifact(database_url, job_id, "big.npz", size, sha256)

                url = f"/v1/jobs/{job_id}/artifacts/big.npz"
                digest, received = hashlib.sha256(), 0
                start = time.perf_counter()
                with client.stream("GET", url) as response:
                    response.raise_for_status()
                    for chunk in response.iter_raw(MiB):
                        digest.update(chunk)
                        received += len(chunk)
                seconds["download"] = time.perf_counter() - start
                if received != size or digest.hexdigest() != sha256:
                    raise SystemExit(f"{backend}: downloaded {received} bytes, SHA-256 "
                                     f"{digest.hexdigest()}; expected {size}, {sha256}")

                length = min(RANGE_MIB * MiB, size)
                start = time.perf_counter()
                ranged = client.get(url, headers={"Range": f"bytes={size - length}-{size - 1}"})
                seconds["range"] = time.perf_counter() - start
                if (ranged.status_code != 206 or len(ranged.content) != length
                        or hashlib.sha256(ranged.content).hexdigest() != tail):
                    raise SystemExit(f"{backend}: ranged GET gave {ranged.status_code}, "
                                     f"{len(ranged.content)} bytes, not the file's tail")
                rss = api_peak_rss(api)

            in_place = None
            if backend == "local":
                start = time.perf_counter()
                StoreCache(store, tmp / "cache-in-place").path(key, sha256)
                in_place = time.perf_counter() - start
            cache = StoreCache(store, tmp / "cache-empty", copy_local=backend == "local")
            start = time.perf_counter()
            fetched = cache.path(key, sha256)
            seconds["cache_fetch"] = time.perf_counter() - start
            assert cache.fetches == 1 and fetched.stat().st_size == size
            part_bytes = settings.s3_part_bytes
    sizes = {"range": length}
    return {
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "mib_s": {k: round(sizes.get(k, size) / MiB / v, 1) for k, v in seconds.items()},
        "cache_in_place_ms": None if in_place is None else round(in_place * 1000, 2),
        "api_peak_rss_mib": rss,
        **({"s3_part_bytes": part_bytes} if backend == "s3" else {}),
    }


@contextmanager
def s3_or_nothing(backend: str, tmp: Path) -> Iterator[tuple[str, str] | None]:
    """The S3 server for s3, nothing for local."""
    if backend == "s3":
        with s3_server(tmp) as s3:
            yield s3
    else:
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=256, help="size of the dataset file")
    parser.add_argument("--pairs", type=int, default=2, help="local+s3 rounds, alternated")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # quanta_jobs, and tests.support.s3server for moto

    began = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {backend: [] for backend in BACKENDS}
    with tempfile.TemporaryDirectory(prefix="quanta-store-bench-") as folder:
        data = Path(folder) / "bench.npz"
        size, sha256 = write_dataset(data, args.mib)
        tail = tail_sha256(data, size, min(RANGE_MIB * MiB, size))
        print(f"dataset: {size / MiB:.1f} MiB ({size} bytes)", flush=True)
        for pair in range(args.pairs):
            for backend in BACKENDS if pair % 2 == 0 else BACKENDS[::-1]:
                run = one_backend(backend, data, size, sha256, tail)
                runs[backend].append(run)
                print(f"pair {pair + 1} {backend}: {run['mib_s']}", flush=True)

    medians = {backend: {key: round(statistics.median(r["mib_s"][key] for r in runs[backend]), 1)
                         for key, _ in FIGURES} for backend in BACKENDS}
    ratio = {key: round(medians["s3"][key] / medians["local"][key], 3) for key, _ in FIGURES}
    report = {
        "mib": round(size / MiB, 1), "bytes": size, "pairs": args.pairs,
        "range_mib": RANGE_MIB, "median_mib_s": medians, "s3_over_local": ratio,
        "runs": runs, "wall_s": round(time.perf_counter() - began, 1),
    }

    def cell(backend: str, key: str) -> str:
        each = ", ".join(f"{r['mib_s'][key]:g}" for r in runs[backend])
        return f"{medians[backend][key]:g} ({each})"

    print(f"\n{report['mib']} MiB file, {args.pairs} pairs, MiB/s: median (each run)")
    print("| step | local | s3 (moto) | s3/local |")
    print("|---|---|---|---|")
    for key, label in FIGURES:
        print(f"| {label} | {cell('local', key)} | {cell('s3', key)} | {ratio[key]:g} |")
    in_place = [r["cache_in_place_ms"] for r in runs["local"]]
    rss = {b: [r["api_peak_rss_mib"] for r in runs[b]] for b in BACKENDS}
    print(f"\nlocal StoreCache.path in place (a worker's default, no copy): {in_place} ms; "
          f"API peak RSS MiB: local {rss['local']}, s3 {rss['s3']}; "
          f"S3 part size {runs['s3'][0]['s3_part_bytes'] // MiB} MiB; "
          f"wall {report['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
