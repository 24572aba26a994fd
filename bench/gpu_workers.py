"""Several workers sharing one GPU: aggregate runs per hour and GPU memory per worker.

    python bench/gpu_workers.py [--workers 1 2 4 8] [--window 15] [--precision float32] \
        [--samples 1024] [--epochs 2] [--layer 6] [--json out.json]

For each worker count N, N processes start side by side, each set up as `quanta-worker`
sets itself up (`worker.main.configure_tensorflow`: memory grows as needed, or capped by
`--gpu-memory-mb`). Each runs one seeded `run_transfer` to trace its model (as a
worker's first job does), waits for the others, then runs transfers back to back, with a
worker's hooks, for `--window` seconds. Runs finished in the window, summed over the
workers, give the aggregate runs per hour; each worker reports its peak GPU memory
(TensorFlow's allocator) and `nvidia-smi`'s figure for its process (the CUDA context
included). Meant for a GPU host (see bench/gpu_check.sh); on CPUs it measures CPU sharing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB per process from nvidia-smi (empty without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            found[int(pid)] = int(mib)
    return found


def child(args: argparse.Namespace) -> None:
    """One worker: trace, report ready, wait for the start, run until the window ends."""
    sys.path.insert(0, str(REPO))
    from worker.main import configure_tensorflow

    configure_tensorflow(args.gpu_memory_mb)
    import tensorflow as tf

    from bench.train_throughput import real_path

    folder = Path(args.folder)

    def one() -> float:
        work = Path(tempfile.mkdtemp(dir=folder))
        start = time.perf_counter()
        real_path("transfer", args.layer, "worker", work, Path(args.data), Path(args.weights),
                  args.samples, args.epochs, 1.0, args.precision)
        seconds = time.perf_counter() - start
        shutil.rmtree(work)  # a full-width run writes hundreds of MB
        return seconds

    first = one()
    (folder / f"ready_{args.index}").touch()
    go = folder / "go"
    while not go.exists():
        time.sleep(0.05)
    end = float(go.read_text())
    durations = []
    while time.time() < end:
        seconds = one()
        if time.time() <= end:
            durations.append(seconds)
    memory = {}
    if tf.config.list_physical_devices("GPU"):
        info = tf.config.experimental.get_memory_info("GPU:0")
        memory = {"tf_peak_mib": round(info["peak"] / 2**20), "tf_current_mib":
                  round(info["current"] / 2**20)}
    print(json.dumps({"pid": os.getpid(), "first_run_s": round(first, 2),
                      "runs": len(durations),
                      "median_run_s": round(statistics.median(durations), 2) if durations
                      else None, **memory}), flush=True)
    # Stay alive a moment so that the parent reads nvidia-smi while the context exists.
    time.sleep(3)


def measure(n: int, args: argparse.Namespace, folder: Path, data: Path, weights: Path) -> dict:
    round_dir = folder / f"n{n}"
    round_dir.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--child", "--index", str(i), "--folder", str(round_dir),
         "--data", str(data), "--weights", str(weights), "--samples", str(args.samples),
         "--epochs", str(args.epochs), "--layer", str(args.layer), "--precision",
         args.precision, "--gpu-memory-mb", str(args.gpu_memory_mb)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for i in range(n)]
    deadline = time.monotonic() + args.ready_timeout
    while len(list(round_dir.glob("ready_*"))) < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            return {"workers": n, "error": "a worker did not get ready"}
        time.sleep(0.1)
    (round_dir / "go").write_text(str(time.time() + args.window))
    time.sleep(args.window + 1)
    smi = gpu_memory_by_pid()
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=args.ready_timeout)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for r in reports:
        r["nvidia_smi_mib"] = smi.get(r["pid"])
    runs = sum(r["runs"] for r in reports)
    return {"workers": n, "precision": args.precision, "window_s": args.window,
            "runs_in_window": runs, "runs_per_hour": round(runs / args.window * 3600),
            "per_worker": reports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--gpu-memory-mb", type=int, default=0,
                        help="cap per worker, as QUANTA_GPU_MEMORY_MB (default: grow)")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(REPO))
    from bench.whole_process import synthetic_npz

    results = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        data = synthetic_npz(folder / "synthetic.npz", args.samples)
        subprocess.run([sys.executable, "-m", "quanta.train_source", "-s", f"npz:{data}",
                        "--nb_of_epochs", "1", "--seed", "0", "-o", str(folder / "source")],
                       cwd=REPO, check=True, capture_output=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        weights = next((folder / "source").rglob("source.weights.h5"))
        for n in args.workers:
            results.append(measure(n, args, folder, data, weights))
            r = results[-1]
            if "error" in r:
                print(f"{n} workers: {r['error']}", flush=True)
                continue
            mem = [w.get("nvidia_smi_mib") or w.get("tf_peak_mib") for w in r["per_worker"]]
            print(f"{n} workers, {args.precision}: {r['runs_per_hour']} runs/hour "
                  f"({r['runs_in_window']} in {args.window:g} s), GPU memory per worker "
                  f"(MiB): {mem}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
