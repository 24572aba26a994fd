"""Wall time of a small QUANTA study through the service, against the reference's way.

    .venv/bin/python bench/study_wall_time.py [--layers 7] [--runs 3] [--epochs 2] \
        [--samples 1024] [--width_multiplier 1.0] [--broker redis|sqla] [--witness] \
        [--reference-dir GIT_DIR] [--json out.json]

The study (every layer × every run, `--epochs` epochs on `--samples` synthetic
CIFAR-shaped images) runs through a real service with one worker: `quanta-serve` with
the chosen broker, the dataset uploaded as an `.npz`, a source job, then one study
(`POST /v1/jobs` with kind `study`), timed from its POST until it has succeeded, its
summary and plots included. The reference ran each (layer, run) as its own process that
reloads TensorFlow, the dataset and the source and, when seeded, used one CPU thread; its
time is estimated as (layers × runs) × the mean time of one such process at the first,
middle and last layer: the reference's own `quanta.py` (commit eb90b1b, given its git
directory with `--reference-dir`; full width only), else our command line with TensorFlow
limited to one thread in its place. The network is the seed's (`kes2021`) at full width
by default.

Prints the wall times, where the worker's time went (data, source, build, train,
evaluate, export, from the jobs' results) and the peak memory of the API and the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.whole_process import REFERENCE_ENV, RUNNER, extract_reference  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def synthetic_cifar(path: Path, samples: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (samples, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, samples),
        x_test=rng.integers(0, 256, (samples, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, samples),
    )
    return path


def wait(api: httpx.Client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def reference_run(data: Path, weights: Path, args: argparse.Namespace, tmp: Path,
                  layer: int, reference: Path | None) -> float:
    """One (layer, run) as the reference ran it: a fresh process, seeded. With the
    reference's own code (`reference`, full width only) that is its `quanta.py`, which
    limits itself to one thread when seeded; without it, our command line limited to one
    thread the same way."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    common = ["-sw", str(weights), "-l", str(layer), "-r", "1",
              "--nb_of_target_epochs", str(args.epochs),
              "--nb_of_target_samples", str(args.samples), "--seed", "1"]
    if reference is not None:
        runner = tmp / "run_reference.py"
        runner.write_text(RUNNER)
        env |= {"BENCH_NPZ": str(data), "BENCH_REFERENCE": str(reference)}
        cmd = [sys.executable, str(runner), "-s", "cifar10", "-t", "cifar10",
               "-o", str(tmp / "reference"), *common]
    else:
        env |= {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
        cmd = [sys.executable, "-m", "quanta", "-o", str(tmp / "reference"),
               "-s", f"npz:{data}", "-t", f"npz:{data}",
               "--width_multiplier", str(args.width_multiplier), *common]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp)
    return time.perf_counter() - start


def reference_estimate(data: Path, weights: Path, args: argparse.Namespace,
                       tmp: Path) -> tuple[dict[int, float], str]:
    """Seconds of one reference process per layer, for a few layers spread over the depth
    (the source runs further, and the step is slower, at deeper layers), and what ran."""
    reference = None
    if args.width_multiplier == 1.0 and args.reference_dir:
        reference = extract_reference(Path(args.reference_dir), tmp / "reference_code")
    what = ("the reference's quanta.py (eb90b1b)" if reference is not None
            else "our command line on one thread (the reference's code not given)")
    layers = sorted({0, (args.layers - 1) // 2, args.layers - 1})
    return {layer: reference_run(data, weights, args, tmp, layer, reference)
            for layer in layers}, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--broker", choices=("redis", "sqla"), default="redis")
    parser.add_argument("--source_inference_mode", action="store_true")
    parser.add_argument("--witness", action="store_true",
                        help="the study trains witnesses (one per run; the reference none)")
    parser.add_argument("--reference-dir", default=os.environ.get(REFERENCE_ENV),
                        help=f"git directory of RomainOr/Quanta (default: ${REFERENCE_ENV}); "
                        "used at full width")
    parser.add_argument("--json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = synthetic_cifar(tmp / "cifar_like.npz", args.samples)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")} | {
            "QUANTA_DATABASE_URL": f"sqlite:///{tmp / 'q.db'}",
            "QUANTA_BROKER_URL": "redis://127.0.0.1:6379/7" if args.broker == "redis"
            else f"sqla+sqlite:///{tmp / 'b.db'}",
            "QUANTA_QUEUE": f"bench-{port}",
            "QUANTA_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        serve = subprocess.Popen(
            [sys.executable, "-m", "api.serve", "--workers", "1", "--port", str(port)],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60) as api:
                while True:
                    try:
                        if api.get("/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.2)
                with open(data, "rb") as f:
                    upload = api.post("/v1/uploads", files={"file": ("cifar_like.npz", f)}).json()
                task = {"upload": upload["id"]}
                common = {"seed": 1, "width_multiplier": args.width_multiplier}
                source = api.post("/v1/jobs", json={"kind": "source", "spec": {
                    "source_task": task, "nb_of_epochs": 1, "nb_of_samples": args.samples,
                    **common}}).json()
                source = wait(api, source["id"], 3600)
                assert source["status"] == "succeeded", source
                start = time.perf_counter()
                study = api.post("/v1/jobs", json={"kind": "study", "spec": {
                    "source_task": task, "target_task": task,
                    "source_weights": {"job": source["id"]},
                    "layers": list(range(args.layers)), "nb_of_runs": args.runs,
                    "nb_of_target_epochs": args.epochs, "nb_of_target_samples": args.samples,
                    "source_inference_mode": args.source_inference_mode,
                    "witness": args.witness, **common}})
                assert study.status_code == 201, study.text
                study = wait(api, study.json()["id"], 7200)
                wall = time.perf_counter() - start
                jobs = api.get("/v1/jobs", params={"parent_id": study["id"], "limit": 500}
                               ).json()["items"]
                phases: dict[str, float] = {}
                for job in jobs:
                    for name, seconds in ((job.get("result") or {}).get("timings") or {}).items():
                        phases[name] = phases.get(name, 0.0) + seconds
                in_jobs = sum((datetime.fromisoformat(job["finished_at"])
                               - datetime.fromisoformat(job["started_at"])).total_seconds()
                              for job in jobs)
            pids = [serve.pid] + [int(p) for p in subprocess.run(
                ["pgrep", "-P", str(serve.pid)], capture_output=True, text=True).stdout.split()]
            memory = {str(pid): peak_rss_mib(pid) for pid in pids}
        finally:
            os.killpg(serve.pid, signal.SIGINT)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        weights = next((tmp / "artifacts" / source["id"]).rglob("source.weights.h5"))
        one, reference_what = reference_estimate(data, weights, args, tmp)

    children = args.layers * args.runs
    mean_one = sum(one.values()) / len(one)
    report = {
        "study": {"layers": args.layers, "runs": args.runs, "epochs": args.epochs,
                  "samples": args.samples, "width_multiplier": args.width_multiplier,
                  "broker": args.broker, "source_inference_mode": args.source_inference_mode,
                  "witness": args.witness},
        "load_average": os.getloadavg(),
        "service_wall_s": round(wall, 1),
        "succeeded": sum(job["status"] == "succeeded" for job in jobs),
        "worker_phases_s": {k: round(v, 1) for k, v in sorted(phases.items())},
        # The worker's time in jobs but outside the library (claiming, progress, plots),
        # and the time outside every job (delivery, the study's summary after the last).
        "worker_outside_library_s": round(in_jobs - sum(phases.values()), 1),
        "outside_jobs_s": round(wall - in_jobs, 1),
        "study_status": study["status"],
        "reference": reference_what,
        "reference_one_run_s": {str(k): round(v, 1) for k, v in one.items()},
        "reference_estimate_s": round(children * mean_one, 1),
        "ratio": round(wall / (children * mean_one), 3),
        "peak_rss_mib": memory,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
