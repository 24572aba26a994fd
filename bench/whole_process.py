"""Whole-process wall time of one seeded QUANTA run: the `quanta` command line against the
reference's own `quanta.py`, alternated in one sitting.

    .venv/bin/python bench/whole_process.py [--layer 6] [--epochs 2] [--samples 512] \
        [--pairs 3] [--width_multiplier 1.0] [--reference-dir GIT_DIR] [--json out.json] \
        [--precisions float32 mixed_bfloat16]

Both sides get the same synthetic CIFAR-shaped arrays, the same source weights file (one
written by `quanta-train-source`, which writes the reference's layout), seed, layer,
epochs and samples, and each run is a fresh process: start-up, TensorFlow import, data,
source, building, training, testing and export, as a user would run it. Each side runs
through a small runner that also breaks its process down the same way (start-up and
imports, then the seconds in Keras's fit, evaluate, predict and save, and the rest).

The reference is RomainOr/Quanta at commit eb90b1b. None of its code is kept in this
repository: its Python files are read at run time from a git directory
(`--reference-dir` or `$QUANTA_REFERENCE_GIT_DIR`) into a temporary folder; without one,
that side is skipped with a message. Its loaders read `keras.datasets`, so a small
runner replaces `cifar10.load_data` with a function returning the arrays our side reads
as an `npz:` task, then runs `quanta.py` as its `__main__`. It limits TensorFlow to one
thread when seeded, as it always did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE_COMMIT = "eb90b1b"
REFERENCE_ENV = "QUANTA_REFERENCE_GIT_DIR"

#: Put first in both sides' runners: the time to import TensorFlow and Keras, then the
#: seconds spent in Keras's fit, evaluate, predict and save, written when the process
#: ends, so that both processes are broken down the same way.
BREAKDOWN = textwrap.dedent('''
    import atexit
    import json
    import os
    import time

    import keras
    import tensorflow

    _SPENT = {"imported_at": time.time()}
    from keras.src.models.model import Model


    def _timed(name, method):
        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                _SPENT[name] = _SPENT.get(name, 0.0) + time.perf_counter() - start
        return wrapper


    for _name in ("fit", "evaluate", "predict", "save"):
        setattr(Model, _name, _timed(_name, getattr(Model, _name)))
    if os.environ.get("BENCH_BREAKDOWN"):
        atexit.register(lambda: open(os.environ["BENCH_BREAKDOWN"], "w").write(
            json.dumps(_SPENT)))
''')

#: Runs this project's command line (`python -m quanta`) after BREAKDOWN.
OURS_RUNNER = BREAKDOWN + textwrap.dedent('''
    import runpy
    import sys

    sys.argv = ["quanta", *sys.argv[1:]]
    runpy.run_module("quanta", run_name="__main__", alter_sys=True)
''')

RUNNER = BREAKDOWN + textwrap.dedent('''
    # Runs the reference's quanta.py on arrays instead of the keras.datasets download.
    import os
    import runpy
    import sys

    import numpy as np

    data = np.load(os.environ["BENCH_NPZ"])
    arrays = ((data["x_train"], data["y_train"].reshape(-1, 1)),
              (data["x_test"], data["y_test"].reshape(-1, 1)))

    import keras
    import tensorflow as tf

    for module in {keras.datasets.cifar10, tf.keras.datasets.cifar10}:
        module.load_data = lambda: arrays
    folder = os.environ["BENCH_REFERENCE"]
    sys.path.insert(0, folder)
    sys.argv = [os.path.join(folder, "quanta.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
''')


def synthetic_npz(path: Path, samples: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (samples, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, samples).astype(np.uint8),
        x_test=rng.integers(0, 256, (samples, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, samples).astype(np.uint8),
    )
    return path


def extract_reference(git_dir: Path, into: Path) -> Path | None:
    """The reference's Python files at REFERENCE_COMMIT, or None (with a message) if the
    git directory is missing or lacks the commit."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True)

    names = git("ls-tree", "-r", "--name-only", REFERENCE_COMMIT)
    if names.returncode != 0:
        print(f"reference skipped: no commit {REFERENCE_COMMIT} in {git_dir}: "
              f"{names.stderr.decode().strip()}")
        return None
    into.mkdir(parents=True)
    for name in names.stdout.decode().split():
        if name.endswith(".py"):  # the code only: its weights file is not needed
            (into / name).write_bytes(git("show", f"{REFERENCE_COMMIT}:{name}").stdout)
    return into


def timed(cmd: list[str], env: dict[str, str], log: Path,
          parts: list[dict[str, float]] | None = None) -> float:
    """Seconds `cmd` took; with `parts`, a runner's BREAKDOWN of it is appended there:
    start-up and imports, Keras's fit, evaluate, predict and save, and the rest."""
    breakdown = log.parent / "breakdown.json"
    breakdown.unlink(missing_ok=True)
    launched = time.time()
    start = time.perf_counter()
    with open(log, "ab") as out:
        subprocess.run(cmd, env=dict(env, BENCH_BREAKDOWN=str(breakdown)), cwd=log.parent,
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    if parts is not None and breakdown.is_file():
        spent = json.loads(breakdown.read_text())
        row = {"start-up and imports": spent.pop("imported_at") - launched, **spent}
        row["rest"] = seconds - sum(row.values())
        parts.append({name: round(value, 2) for name, value in row.items()})
    return seconds


def machine_gflops(env: dict[str, str]) -> float:
    """The machine's float32 matrix-product rate now (`train_throughput.matmul_gflops`), in
    a process of its own so that this one never imports TensorFlow."""
    out = subprocess.run([sys.executable, "-c", "from bench.train_throughput import "
                          "matmul_gflops; print(matmul_gflops())"], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=3, help="alternated (ours, reference) pairs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width_multiplier", type=float, default=1.0,
                        help="ours only: the reference's network is always full width; "
                        "below 1 the reference side is skipped")
    parser.add_argument("--reference-dir", default=os.environ.get(REFERENCE_ENV),
                        help=f"git directory of RomainOr/Quanta (default: ${REFERENCE_ENV})")
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=["float32", "mixed_float16", "mixed_bfloat16"],
                        help="ours in each of these, alternated within every pair (the "
                        "first is the one compared with the reference)")
    parser.add_argument("--json")
    args = parser.parse_args()

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = synthetic_npz(tmp / "synthetic.npz", args.samples)
        log = tmp / "log.txt"
        timed([sys.executable, "-m", "quanta.train_source", "-s", f"npz:{data}",
               "--nb_of_epochs", "1", "--seed", "0", "-o", str(tmp / "source"),
               "--width_multiplier", str(args.width_multiplier)], env, log)
        weights = next((tmp / "source").rglob("source.weights.h5"))
        reference = None
        if args.width_multiplier != 1.0:
            print("reference skipped: its network is full width only")
        elif not args.reference_dir:
            print(f"reference skipped: give --reference-dir or ${REFERENCE_ENV} (a git "
                  "directory of RomainOr/Quanta)")
        else:
            reference = extract_reference(Path(args.reference_dir), tmp / "reference")
        runner = tmp / "run_reference.py"
        runner.write_text(RUNNER)
        ours_runner = tmp / "run_ours.py"
        ours_runner.write_text(OURS_RUNNER)
        common = ["-l", str(args.layer), "-r", "1", "--nb_of_target_epochs", str(args.epochs),
                  "--nb_of_target_samples", str(args.samples), "--seed", str(args.seed)]
        ours_cmds = {precision: [
            sys.executable, str(ours_runner), "-s", f"npz:{data}", "-sw", str(weights), "-t",
            f"npz:{data}", "-o", str(tmp / f"ours_{precision}"), "--width_multiplier",
            str(args.width_multiplier), "--precision", precision, *common]
            for precision in args.precisions}
        ref_cmd = [sys.executable, str(runner), "-s", "cifar10", "-sw", str(weights),
                   "-t", "cifar10", "-o", str(tmp / "theirs"), *common]
        ref_env = dict(env, BENCH_NPZ=str(data), BENCH_REFERENCE=str(reference))
        # The floor both pay: a process that only imports TensorFlow.
        import_s = timed([sys.executable, "-c", "import tensorflow"], env, log)
        matmul = [machine_gflops(env)]
        by_precision: dict[str, list[float]] = {precision: [] for precision in args.precisions}
        ours, theirs = by_precision[args.precisions[0]], []
        parts: dict[str, list[dict[str, float]]] = {"ours": [], "reference": []}
        for pair in range(args.pairs):
            for precision, command in ours_cmds.items():
                by_precision[precision].append(timed(
                    command, env, log, parts["ours"] if precision == args.precisions[0]
                    else None))
            if reference is not None:
                theirs.append(timed(ref_cmd, ref_env, log, parts["reference"]))
            print(f"pair {pair + 1}: ours "
                  + ", ".join(f"{precision} {seconds[-1]:.1f} s"
                              for precision, seconds in by_precision.items())
                  + (f", reference {theirs[-1]:.1f} s, ratio {ours[-1] / theirs[-1]:.3f}"
                     if theirs else ""), flush=True)
        matmul.append(machine_gflops(env))
        if reference is not None:
            found = sorted(p.name for p in (tmp / "theirs").rglob("*.jsonl"))
            if not any(name.startswith("testing_metrics_of_target") for name in found):
                sys.exit(f"the reference wrote no target metrics: {found}; see its output:\n"
                         + log.read_text()[-4000:])

    report = {
        "run": {"layer": args.layer, "epochs": args.epochs, "samples": args.samples,
                "seed": args.seed, "width_multiplier": args.width_multiplier},
        "load_average": os.getloadavg(),
        "matmul_gflops_before_after": matmul,
        "import_tensorflow_s": round(import_s, 2),
        "ours_s": [round(s, 2) for s in ours],
        "reference_s": [round(s, 2) for s in theirs],
        "ours_median_s": round(statistics.median(ours), 2),
        "ours_s_by_precision": {precision: [round(s, 2) for s in seconds]
                                for precision, seconds in by_precision.items()},
    }
    report["breakdown_median_s"] = {
        side: {name: round(statistics.median(row.get(name, 0.0) for row in rows), 2)
               for name in rows[0]} for side, rows in parts.items() if rows}
    for precision, seconds in list(by_precision.items())[1:]:
        report[f"{precision}_to_{args.precisions[0]}_median"] = round(statistics.median(
            b / a for a, b in zip(ours, seconds, strict=True)), 3)
    if theirs:
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        report |= {"reference_median_s": round(statistics.median(theirs), 2),
                   "ratios": [round(r, 3) for r in ratios],
                   "ratio_median": round(statistics.median(ratios), 3)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
