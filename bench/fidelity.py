"""The statistics of QUANTA against the reference's own tool: final λ_s and target accuracy
per layer over several seeds, both tools on the same real data and the same source weights.

    .venv/bin/python bench/fidelity.py --reference-dir GIT_DIR [--seeds 1 2 3 4 5] \
        [--layers 0 3 6 -1] [--samples 512] [--epochs 3] [--source-epochs 5] [--json out.json]
    .venv/bin/python bench/fidelity.py --table out.json    # the table of a (partial) run
    .venv/bin/python bench/fidelity.py --against-precision mixed_bfloat16 [--seeds ...]

The last form measures a precision instead of the reference: this project in float32
against itself in `mixed_bfloat16` (or `mixed_float16`), the same seeds, alternated, each
run's whole process timed; the difference of means is also given as a multiple of the
run-to-run standard deviation.

A seeded result of this project is not the reference's bit for bit: each purpose (target
weights, masks, batch order) draws from a stream of its own (`quanta_spec.streams`), and
the reference draws them all from one sequence. What must hold is that the two tools
measure the same thing: for every layer, the final λ_s and the target's accuracy over
seeds come from the same distribution. This benchmark reports, per layer, both tools'
mean and standard deviation, Welch's p-value, and the difference of the means as a
fraction of the spread of λ_s between layers (how far apart the layers the user compares
are).

Data: scikit-learn's `digits` (real, offline) upsampled to 32x32x3, the shape the reference's
CIFAR network takes; its first `--samples` images train and test the targets, as
`--nb_of_target_samples` does. The source: the full-width `kes2021` network trained by
`quanta-train-source` with seed 0 (the seed's tool had no source-training script; ours
writes the reference's `.weights.h5` layout, which its `quanta.py` loads), never one of
the transfer seeds. The reference's code is read from a git directory at run time, as
`bench/whole_process.py` does; it runs one thread when seeded, as it always did, so this
takes tens of minutes. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.whole_process import REFERENCE_ENV, RUNNER, extract_reference, timed


def digits_32(path: Path) -> Path:
    """`digits` as the project loads it, each pixel repeated 4x4 and in three channels."""
    from quanta.datasets import load_dataset

    data = load_dataset("digits")

    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(np.repeat(x, 4, axis=1), 4, axis=2), 3, axis=3)

    np.savez(path, x_train=up(data.x_train), y_train=data.y_train.astype(np.uint8),
             x_test=up(data.x_test), y_test=data.y_test.astype(np.uint8))
    return path


def final_values(folder: Path) -> tuple[float, float]:
    """(final λ_s, target accuracy) of the one run in `folder`; with several QUANTA layers
    (all at once), the mean of their final λ_s."""
    quantas = json.loads(next(folder.rglob("quantas_r_*_l_*.jsonl")).read_text().splitlines()[0])
    finals = [entry["quantas"]["source"][-1] for entry in quantas.values()]
    metrics = next(folder.rglob("testing_metrics_of_target_r_*_l_*.jsonl"))
    accuracy = json.loads(metrics.read_text().splitlines()[0])["categorical_accuracy"]
    return float(np.mean(finals)), float(accuracy)


def welch_p(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return None
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarise(results: dict[str, dict[int, list[tuple[float, float]]]],
              first: str = "ours", second: str = "reference") -> list[dict]:
    """One row per layer and quantity: both sides' mean and SD, Welch's p, and the
    difference of means relative to the spread of λ_s (or accuracy) between layers, and
    to the run-to-run spread (the SD of the two sides pooled)."""
    rows = []
    for index, quantity in enumerate(("lambda_s", "target_accuracy")):
        means = {side: {layer: statistics.fmean(v[index] for v in values)
                        for layer, values in by_layer.items()}
                 for side, by_layer in results.items()}
        pooled = [m for by_layer in means.values() for m in by_layer.values()]
        spread = max(pooled) - min(pooled)
        for layer in results[first]:
            ours = [v[index] for v in results[first][layer]]
            row = {"quantity": quantity, "layer": layer, "n": len(ours),
                   f"{first}_mean": statistics.fmean(ours),
                   f"{first}_sd": statistics.stdev(ours) if len(ours) > 1 else 0.0}
            theirs = [v[index] for v in results.get(second, {}).get(layer, [])]
            if theirs:
                difference = row[f"{first}_mean"] - statistics.fmean(theirs)
                sd = statistics.stdev(theirs) if len(theirs) > 1 else 0.0
                run_to_run = math.sqrt((row[f"{first}_sd"] ** 2 + sd ** 2) / 2)
                row |= {f"{second}_mean": statistics.fmean(theirs), f"{second}_sd": sd,
                        "welch_p": welch_p(ours, theirs),
                        "difference_over_layer_spread": (difference / spread if spread
                                                         else None),
                        "difference_over_run_sd": (difference / run_to_run if run_to_run
                                                   else None)}
            rows.append(row)
    return rows


def markdown(rows: list[dict], first: str = "ours", second: str = "reference") -> str:
    def f(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"| quantity | layer | n | {first} mean ± SD | {second} mean ± SD | Welch p "
             "| difference / spread between layers | difference / run-to-run SD |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layer = "all" if r["layer"] < 0 else str(r["layer"])
        lines.append(f"| {r['quantity']} | {layer} | {r['n']} | {f(r[first + '_mean'])} ± "
                     f"{f(r[first + '_sd'])} | {f(r.get(second + '_mean'))} ± "
                     f"{f(r.get(second + '_sd'))} | {f(r.get('welch_p'), 3)} | "
                     f"{f(r.get('difference_over_layer_spread'), 3)} | "
                     f"{f(r.get('difference_over_run_sd'), 2)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 3, 6, -1])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--source-epochs", type=int, default=5)
    parser.add_argument("--source-seed", type=int, default=0)
    parser.add_argument("--reference-dir", default=os.environ.get(REFERENCE_ENV),
                        help=f"git directory of RomainOr/Quanta (default: ${REFERENCE_ENV})")
    parser.add_argument("--against-precision", choices=("mixed_bfloat16", "mixed_float16"),
                        help="instead of the reference: this project in float32 against "
                        "itself in this precision, the same seeds alternated (the λ_s "
                        "difference, and each run's whole process timed)")
    parser.add_argument("--quanta-lr-multiplier", type=float, default=1.0,
                        help="--quanta_lr_multiplier of every run (1: the reference's rate; "
                        "the reference itself has no such option)")
    parser.add_argument("--json")
    parser.add_argument("--table", metavar="JSON",
                        help="only print the table of a JSON this script wrote (a partial "
                        "one too: what an interrupted run measured)")
    args = parser.parse_args()
    if args.table:
        raw = json.loads(Path(args.table).read_text())["raw"]
        sides = list(raw) + ["reference"] * (len(raw) < 2)
        print(markdown(summarise({tool: {int(layer): [tuple(v) for v in values]
                                         for layer, values in by_layer.items()}
                                  for tool, by_layer in raw.items()}, *sides[:2]),
                       *sides[:2]))
        return
    if args.source_seed in args.seeds:
        parser.error("the transfer seeds must differ from the source's training seed")

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = digits_32(tmp / "digits32.npz")
        log = tmp / "log.txt"
        timed([sys.executable, "-m", "quanta.train_source", "-s", f"npz:{data}",
               "--nb_of_epochs", str(args.source_epochs), "--seed", str(args.source_seed),
               "-o", str(tmp / "source")], env, log)
        weights = next((tmp / "source").rglob("source.weights.h5"))
        source_metrics = next((tmp / "source").rglob("testing_metrics_of_source.jsonl"))
        source_accuracy = json.loads(source_metrics.read_text())["categorical_accuracy"]
        print(f"source: {args.source_epochs} epochs, test accuracy {source_accuracy:.3f}",
              flush=True)
        against = args.against_precision
        reference = (extract_reference(Path(args.reference_dir), tmp / "reference")
                     if args.reference_dir and not against else None)
        if reference is None and not against:
            print(f"reference skipped: give --reference-dir or ${REFERENCE_ENV}")
        runner = tmp / "run_reference.py"
        runner.write_text(RUNNER)
        ref_env = dict(env, BENCH_NPZ=str(data), BENCH_REFERENCE=str(reference))
        first, second = ("float32", against) if against else ("ours", "reference")
        results: dict[str, dict[int, list[tuple[float, float]]]] = {first: {}}
        if reference is not None or against:
            results[second] = {}
        seconds: dict[str, list[float]] = {first: [], second: []}
        for layer in args.layers:
            for seed in args.seeds:
                common = ["-l", str(layer), "-r", "1", "--nb_of_target_epochs",
                          str(args.epochs), "--nb_of_target_samples", str(args.samples),
                          "--seed", str(seed), "-sw", str(weights)]
                if args.quanta_lr_multiplier != 1.0:
                    if reference is not None:
                        parser.error("the reference has no --quanta_lr_multiplier")
                    common += ["--quanta_lr_multiplier", str(args.quanta_lr_multiplier)]
                ours = [sys.executable, "-m", "quanta", "-s", f"npz:{data}", "-t",
                        f"npz:{data}", *common]
                out = tmp / f"ours_l{layer}_s{seed}"
                seconds[first].append(timed([*ours, "-o", str(out)], env, log))
                results[first].setdefault(layer, []).append(final_values(out))
                line = (f"layer {layer} seed {seed}: {first} λ_s "
                        f"{results[first][layer][-1][0]:.4f}")
                if against:
                    out = tmp / f"{against}_l{layer}_s{seed}"
                    seconds[second].append(timed([*ours, "-o", str(out), "--precision",
                                                  against], env, log))
                    results[second].setdefault(layer, []).append(final_values(out))
                    line += (f", {second} {results[second][layer][-1][0]:.4f} "
                             f"({seconds[second][-1] / seconds[first][-1]:.2f} of the time)")
                if reference is not None:
                    out = tmp / f"reference_l{layer}_s{seed}"
                    timed([sys.executable, str(runner), "-s", "cifar10", "-t", "cifar10",
                           "-o", str(out), *common], ref_env, log)
                    results["reference"].setdefault(layer, []).append(final_values(out))
                    line += f", reference {results['reference'][layer][-1][0]:.4f}"
                print(line, flush=True)
                if args.json:  # what is measured so far survives an interrupted run
                    Path(args.json).write_text(json.dumps(
                        {"run": vars(args) | {"source_test_accuracy": source_accuracy},
                         "raw": results, "seconds": seconds, "partial": True}, default=str))

    rows = summarise(results, first, second)
    report = {"run": vars(args) | {"source_test_accuracy": source_accuracy},
              "wall_s": round(time.perf_counter() - started, 1),
              "load_average": os.getloadavg(), "raw": results, "rows": rows,
              "seconds": seconds}
    print(markdown(rows, first, second))
    if seconds[second]:
        ratios = [b / a for a, b in zip(seconds[first], seconds[second], strict=False)]
        report["time_ratio_median"] = statistics.median(ratios)
        print(f"whole process, {second} against {first}: median ratio "
              f"{report['time_ratio_median']:.3f} over {len(ratios)} pairs")
    print(json.dumps({k: v for k, v in report.items() if k not in ("raw", "rows")}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
