"""What a job costs beyond its training steps, in a warm worker.

One process plays a worker that has already run a job: `run_transfer` with a worker's
hooks (progress after every epoch, the cancellation check, checkpoints at the worker's
interval) and then the job's plot (`worker.job_plots.transfer_plot`), as
`worker.runner` calls them, on the seed's network (`kes2021`, full width), layer 6,
CIFAR-shaped synthetic data. The first call traces the model; the calls after it are
the warm jobs measured. Each job's time is split into its phases (`Timings`), and the
fixed cost is the job's wall time minus its steps at the job's own step time (the steps
after the first, each as long as the median step): the first step's extra (kernel
set-up after seeding), building or reusing the model, the data and source (cached),
epoch ends, evaluating, exporting and plotting. Claiming a job from the queue is
`bench/post_to_start.py`'s figure.

    python bench/fixed_costs.py [--jobs 3] [--samples 1024] [--epochs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_throughput import matmul_gflops, real_path, write_npz
from quanta import training
from quanta_spec import TransferSpec
from worker.job_plots import transfer_plot


def job(workdir: Path, data: Path, weights: Path, samples: int, epochs: int,
        layer: int) -> dict:
    start = time.perf_counter()
    out = real_path("transfer", layer, "worker", workdir, data, weights, samples, epochs, 1.0)
    result = out.pop("result")
    plot_start = time.perf_counter()
    spec = TransferSpec(source_task=f"npz:{data}", target_task=f"npz:{data}",
                        source_weights=str(weights), layer_to_transfer=layer,
                        nb_of_target_epochs=epochs, seed=0)
    transfer_plot(spec, result.experiment_dir, Path(result.experiment_dir).parent, 1)
    plot_s = time.perf_counter() - plot_start
    wall = time.perf_counter() - start
    steps = epochs * training.steps_per_epoch(samples)
    step_s = out["steps_ms_per_step"] / 1000
    train = out["train_s"]
    parts = {
        "first step beyond a step": train["first_step"] - step_s,
        "training set-up and epoch ends": train["setup"] + train["epoch_end"],
        **{name: seconds for name, seconds in out["phases_s"].items() if name != "train"},
        "plot": plot_s,
    }
    fixed = wall - steps * step_s
    parts["rest (hooks, Python)"] = fixed - sum(parts.values())
    return {"wall_s": round(wall, 3), "steps": steps, "step_ms": out["steps_ms_per_step"],
            "fixed_s": round(fixed, 3), "parts_s": {k: round(v, 3) for k, v in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="warm jobs measured")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rate = matmul_gflops()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        data = write_npz(workdir / "data.npz", args.samples)
        source = real_path("source", None, "cli", workdir, data, None, args.samples, 1, 1.0)
        weights = Path(source["result"].training_dir) / "source.weights.h5"
        cold = job(workdir, data, weights, args.samples, args.epochs, args.layer)
        warm = [job(workdir, data, weights, args.samples, args.epochs, args.layer)
                for _ in range(args.jobs)]
    report = {"matmul_gflops": rate, "load_before": round(load, 2),
              "load_after": round(os.getloadavg()[0], 2), "args": vars(args) | {"json": None},
              "cold": cold, "warm": warm,
              "warm_fixed_s_median": statistics.median(j["fixed_s"] for j in warm)}
    print(f"matmul {rate} GFLOP/s, load {report['load_before']} -> {report['load_after']}; "
          f"layer {args.layer}, {args.samples} samples, {args.epochs} epochs")
    names = list(warm[0]["parts_s"])
    print("| job | wall s | steps x ms | fixed s | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for label, row in [("cold", cold)] + [(f"warm {i + 1}", r) for i, r in enumerate(warm)]:
        print(f"| {label} | {row['wall_s']} | {row['steps']} x {row['step_ms']} | "
              f"{row['fixed_s']} | " + " | ".join(str(row["parts_s"].get(n, 0)) for n in names)
              + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
