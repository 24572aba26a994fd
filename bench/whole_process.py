"""Whole-process wall time of one seeded QUANTA run: the `quanta` command line against the
reference's own `quanta.py`, alternated in one sitting.

    .venv/bin/python bench/whole_process.py [--layer 6] [--epochs 2] [--samples 512] \
        [--pairs 3] [--width_multiplier 1.0] [--reference-dir GIT_DIR] [--json out.json]

Both sides get the same synthetic CIFAR-shaped arrays, the same source weights file (one
written by `quanta-train-source`, which writes the reference's layout), seed, layer,
epochs and samples, and each run is a fresh process: start-up, TensorFlow import, data,
source, building, training, testing and export, as a user would run it.

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

RUNNER = textwrap.dedent('''
    """Runs the reference's quanta.py on arrays instead of the keras.datasets download."""
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


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "ab") as out:
        subprocess.run(cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    return time.perf_counter() - start


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
        common = ["-l", str(args.layer), "-r", "1", "--nb_of_target_epochs", str(args.epochs),
                  "--nb_of_target_samples", str(args.samples), "--seed", str(args.seed)]
        ours_cmd = [sys.executable, "-m", "quanta", "-s", f"npz:{data}", "-sw", str(weights),
                    "-t", f"npz:{data}", "-o", str(tmp / "ours"),
                    "--width_multiplier", str(args.width_multiplier), *common]
        ref_cmd = [sys.executable, str(runner), "-s", "cifar10", "-sw", str(weights),
                   "-t", "cifar10", "-o", str(tmp / "theirs"), *common]
        ref_env = dict(env, BENCH_NPZ=str(data), BENCH_REFERENCE=str(reference))
        # The floor both pay: a process that only imports TensorFlow.
        import_s = timed([sys.executable, "-c", "import tensorflow"], env, log)
        ours, theirs = [], []
        for pair in range(args.pairs):
            ours.append(timed(ours_cmd, env, log))
            if reference is not None:
                theirs.append(timed(ref_cmd, ref_env, log))
            print(f"pair {pair + 1}: ours {ours[-1]:.1f} s"
                  + (f", reference {theirs[-1]:.1f} s, ratio {ours[-1] / theirs[-1]:.3f}"
                     if theirs else ""), flush=True)
        if reference is not None:
            found = sorted(p.name for p in (tmp / "theirs").rglob("*.jsonl"))
            if not any(name.startswith("testing_metrics_of_target") for name in found):
                sys.exit(f"the reference wrote no target metrics: {found}; see its output:\n"
                         + log.read_text()[-4000:])

    report = {
        "run": {"layer": args.layer, "epochs": args.epochs, "samples": args.samples,
                "seed": args.seed, "width_multiplier": args.width_multiplier},
        "load_average": os.getloadavg(),
        "import_tensorflow_s": round(import_s, 2),
        "ours_s": [round(s, 2) for s in ours],
        "reference_s": [round(s, 2) for s in theirs],
        "ours_median_s": round(statistics.median(ours), 2),
    }
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
