"""Training throughput of the full-size network on synthetic CIFAR-shaped data.

Two tables. The bare step: milliseconds per step of `model.fit` on NumPy arrays, for
source training and QUANTA transfers, seeded (op determinism) and unseeded, batch 32,
after a warm-up epoch that absorbs tracing. The real path: `train_source` and
`run_transfer`, the code the command line and the workers run, with a worker's hooks
(progress after every epoch, a cancellation check, checkpoints at the worker's default
interval) or the command line's progress bar, on the same data from an `npz:` task, each
called twice in one process (cold: the first job of a worker, which traces its model;
warm: the next one, which reuses it), phase by phase, and its training time per step as
a ratio to the bare step's.

    python bench/train_throughput.py [--samples 1024] [--layers 0 6] [--real-layers 6] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_IMPORT_START = time.perf_counter()
import keras  # noqa: E402
import numpy as np  # noqa: E402

from quanta import training  # noqa: E402
from quanta.models import build_model, freeze, source_trunk, with_source_inputs  # noqa: E402
from quanta.progress import EpochProgressBar  # noqa: E402
from quanta.source_training import train_source  # noqa: E402
from quanta.transfer import run_transfer  # noqa: E402
from quanta_spec import SourceSpec, TransferSpec  # noqa: E402
from quanta_spec.streams import Stream  # noqa: E402

#: Seconds to import TensorFlow, Keras and the library in this process.
IMPORT_S = time.perf_counter() - _IMPORT_START
#: The workers' defaults (quanta_jobs.settings): checkpoint interval, cancel poll.
WORKER_CHECKPOINT_INTERVAL_S = 30.0
WORKER_CANCEL_POLL_S = 1.0


class StepTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.durations: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def synthetic(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(samples, 32, 32, 3), dtype=np.uint8)
    return x, rng.integers(0, 10, size=samples)


def measure(kind: str, layer: int | None, seeded: bool, samples: int, width: float,
            precision: str = "float32", cached_source: bool = False, epochs: int = 1) -> dict:
    """ms per step of one configuration; `cached_source` trains with precomputed source
    features (the `source_inference_mode` option) instead of running the source each step."""
    training.set_determinism(0 if seeded else None, Stream.TARGET_INIT)
    x, labels = synthetic(samples)
    y = training.one_hot(labels, 10)
    keras.config.set_dtype_policy(precision)  # the frozen source too, as the library does
    source = build_model((32, 32, 3), 10, width_multiplier=width, name="source")
    inputs: list[np.ndarray] | np.ndarray = x
    if kind == "source":
        model = source
    else:
        layers = list(range(7)) if layer is None else [layer]
        freeze(source)
        model = build_model((32, 32, 3), 10, source=source, transfer_layers=layers,
                            width_multiplier=width, source_inference=cached_source,
                            name="target")
        if cached_source:
            features = source_trunk(source, layers, inference=True).predict(
                x, batch_size=training.BATCH_SIZE, verbose=0)
            features = features if isinstance(features, list) else [features]
            model, inputs = with_source_inputs(model), [x, *features]
    keras.config.set_dtype_policy("float32")
    training.compile_model(model)
    warm = [part[:256] for part in inputs] if isinstance(inputs, list) else inputs[:256]
    model.fit(warm, y[:256], batch_size=training.BATCH_SIZE, epochs=1, verbose=0)  # warm-up
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(inputs, y, batch_size=training.BATCH_SIZE, epochs=epochs, verbose=0,
              callbacks=[timer])
    wall = time.perf_counter() - start
    step = statistics.median(timer.durations)
    return {
        "kind": kind + (" (cached source)" if cached_source else ""),
        "layer": "all" if kind == "transfer" and layer is None else layer,
        "seeded": seeded,
        "precision": precision,
        "ms_per_step": round(step * 1000, 1),
        "samples_per_s": round(training.BATCH_SIZE / step, 1),
        "epoch_samples_per_s": round(samples * epochs / wall, 1),
        # The whole fit call per step (epoch ends and the last, short batch included),
        # which is what the real path's training phase is compared with.
        "wall_ms_per_step": round(wall / len(timer.durations) * 1000, 1),
    }


class _Worker:
    """A worker's hooks without its database: the progress event serialised after every
    epoch, and a cancellation check as cheap as the worker's between two polls."""

    def __init__(self) -> None:
        self.events = 0
        self._last = 0.0

    def on_epoch(self, event: object) -> None:
        json.dumps(dataclasses.asdict(event))  # type: ignore[call-overload]
        self.events += 1

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if now - self._last >= WORKER_CANCEL_POLL_S:
            self._last = now
        return False


def real_path(kind: str, layer: int | None, way: str, workdir: Path, data: Path,
              weights: Path | None, samples: int, epochs: int, width: float,
              precision: str = "float32") -> dict:
    """One `train_source` / `run_transfer` call as the worker (`way="worker"`) or the
    command line (`way="cli"`) makes it: phases in seconds and its training per step."""
    folder = Path(tempfile.mkdtemp(dir=workdir))
    task = f"npz:{data}"
    common = dict(seed=0, width_multiplier=width, precision=precision)
    hooks: dict = {}
    if way == "worker":
        worker = _Worker()
        hooks = dict(on_epoch=worker.on_epoch, should_cancel=worker.should_cancel,
                     checkpoint_dir=folder / "checkpoints",
                     checkpoint_interval_s=WORKER_CHECKPOINT_INTERVAL_S)
    else:
        hooks = dict(callbacks=[EpochProgressBar()])
    with contextlib.redirect_stderr(io.StringIO()):  # the command line's progress bars
        if kind == "source":
            result = train_source(SourceSpec(source_task=task, nb_of_epochs=epochs, **common),
                                  folder, **hooks)
        else:
            result = run_transfer(TransferSpec(
                source_task=task, target_task=task, source_weights=str(weights),
                layer_to_transfer=-1 if layer is None else layer,
                nb_of_target_epochs=epochs, **common), folder, **hooks)
    steps = epochs * training.steps_per_epoch(samples)
    parts = result.train_timings
    return {
        "phases_s": {k: round(v, 3) for k, v in result.timings.items()},
        "train_s": {k: round(v, 3) for k, v in parts.items()},
        "train_ms_per_step": round(result.timings["train"] / steps * 1000, 1),
        # The steps after the first (which traces a model not traced yet).
        "steps_ms_per_step": round(parts["steps"] / max(steps - 1, 1) * 1000, 1),
        "result": result,
    }


def measure_real(kind: str, layer: int | None, way: str, workdir: Path, data: Path,
                 weights: Path | None, samples: int, epochs: int, width: float,
                 bare: dict, precision: str = "float32") -> dict:
    """The real path twice in this process, cold then warm, beside the bare step."""
    cold = real_path(kind, layer, way, workdir, data, weights, samples, epochs, width,
                     precision)
    warm = real_path(kind, layer, way, workdir, data, weights, samples, epochs, width,
                     precision)
    cold.pop("result"), warm.pop("result")
    return {
        "kind": kind, "layer": "all" if kind == "transfer" and layer is None else layer,
        "way": way, "precision": precision, "samples": samples, "epochs": epochs,
        "cold": cold, "warm": warm,
        # The first step beyond a usual one: tracing a new model (cold), and in every call
        # TensorFlow instantiating the step's kernels again, since seeding clears its cache.
        "tracing_s": round(cold["train_s"]["first_step"] - cold["steps_ms_per_step"] / 1000, 3),
        "first_step_extra_warm_s": round(warm["train_s"]["first_step"]
                                         - warm["steps_ms_per_step"] / 1000, 3),
        "bare_ms_per_step": bare["ms_per_step"],
        "bare_wall_ms_per_step": bare["wall_ms_per_step"],
        "ratio_train_to_bare_wall": round(warm["train_ms_per_step"] / bare["wall_ms_per_step"], 3),
        "ratio_steps_to_bare_step": round(warm["steps_ms_per_step"] / bare["ms_per_step"], 3),
    }


def write_npz(path: Path, samples: int) -> Path:
    x, labels = synthetic(samples)
    test_x, test_labels = synthetic(max(samples // 4, training.BATCH_SIZE))
    np.savez(path, x_train=x, y_train=labels, x_test=test_x, y_test=test_labels)
    return path


def matmul_gflops(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """The machine's matrix-product speed in `dtype` (float32 by default), to compare
    figures across machines."""
    import tensorflow as tf

    a = tf.cast(tf.random.uniform((n, n)), dtype)
    tf.matmul(a, a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        tf.matmul(a, a).numpy()
    return round(2 * n**3 * repeats / (time.perf_counter() - start) / 1e9, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--layers", nargs="*", default=["0", "6"],
                        help="transferred layers to measure; 'all' for all at once")
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--one-thread", action="store_true",
                        help="limit TensorFlow to one thread, as the reference did when seeded "
                        "(to compare with it on the same machine)")
    parser.add_argument("--seeded-only", action="store_true")
    parser.add_argument("--no-cached-source", action="store_true",
                        help="skip the runs with precomputed source features")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs timed (after the warm-up), and the real path's epochs")
    parser.add_argument("--real-layers", nargs="*", default=["6"],
                        help="layers to time on the real path (run_transfer); none to skip")
    parser.add_argument("--no-real-source", dest="real_source", action="store_false",
                        help="skip train_source on the real path")
    parser.add_argument("--ways", nargs="*", default=["worker", "cli"],
                        choices=("worker", "cli"),
                        help="the real path with the worker's hooks, the command line's, or both")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.one_thread:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    cases = [("source", None, False)] + [
        ("transfer", None if layer == "all" else int(layer), False) for layer in args.layers
    ]
    if not args.no_cached_source:
        cases += [("transfer", None if layer == "all" else int(layer), True)
                  for layer in args.layers]
    rows = []
    for seeded in (True,) if args.seeded_only else (True, False):
        for kind, layer, cached in cases:
            rows.append(measure(kind, layer, seeded, args.samples, args.width_multiplier,
                                args.precision, cached, args.epochs))
            r = rows[-1]
            print(f"{r['kind']:24} layer {r['layer']!s:4} seeded={r['seeded']!s:5} "
                  f"{r['ms_per_step']:7.1f} ms/step {r['samples_per_s']:8.1f} samples/s",
                  flush=True)
    real = []
    if args.real_layers or args.real_source:
        bare = {(r["kind"], r["layer"]): r for r in rows if r["seeded"]}
        with tempfile.TemporaryDirectory() as folder:
            workdir = Path(folder)
            data = write_npz(workdir / "synthetic.npz", args.samples)
            source = train_source(SourceSpec(source_task=f"npz:{data}", nb_of_epochs=1, seed=0,
                                             width_multiplier=args.width_multiplier),
                                  workdir / "source")
            weights = source.training_dir / "source.weights.h5"
            real_cases = ([("source", None)] if args.real_source else []) + [
                ("transfer", None if layer == "all" else int(layer)) for layer in args.real_layers]
            for kind, layer in real_cases:
                key = (kind, "all" if kind == "transfer" and layer is None else layer)
                if key not in bare:
                    bare[key] = measure(kind, layer, True, args.samples, args.width_multiplier,
                                        args.precision, False, args.epochs)
                for way in args.ways:
                    real.append(measure_real(kind, layer, way, workdir, data, weights,
                                             args.samples, args.epochs, args.width_multiplier,
                                             bare[key], args.precision))
                    r = real[-1]
                    print(f"real path {kind:8} layer {r['layer']!s:4} {way:6} "
                          f"{r['warm']['train_ms_per_step']:7.1f} ms/step in training, "
                          f"{r['ratio_train_to_bare_wall']:.3f} x the bare fit", flush=True)
    import tensorflow as tf

    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "matmul_2048_gflops": matmul_gflops(),
        "one_thread": args.one_thread,
        "load_average": os.getloadavg(),
        "import_s": round(IMPORT_S, 2),
    }
    print(f"\n{machine}")
    print(f"precision {args.precision}, batch {training.BATCH_SIZE}, {args.samples} samples, "
          f"{args.epochs} epoch(s) timed")
    print("| run | layer | seeded | ms/step | samples/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['layer'] if r['layer'] is not None else '-'} | "
              f"{'yes' if r['seeded'] else 'no'} | {r['ms_per_step']} | {r['samples_per_s']} |")
    if real:
        print("\nThe real path (warm call; seconds per phase, cold call in brackets):")
        print("| run | layer | hooks | data | source | build | first step beyond a step | "
              "train steps | "
              "epoch ends | evaluate | export | ms/step in training | bare fit ms/step | "
              "ratio |\n" + "|---" * 14 + "|")
        for r in real:
            w, c = r["warm"], r["cold"]

            def both(name: str, part: str = "phases_s", w: dict = w, c: dict = c) -> str:
                return f"{w[part].get(name, 0):.2f} ({c[part].get(name, 0):.2f})"

            print(f"| {r['kind']} | {r['layer'] if r['layer'] is not None else '-'} | "
                  f"{r['way']} | {both('data')} | {both('source')} | {both('build')} | "
                  f"{r['first_step_extra_warm_s']:.2f} ({r['tracing_s']:.2f}) | "
                  f"{both('steps', 'train_s')} | "
                  f"{both('epoch_end', 'train_s')} | {both('evaluate')} | {both('export')} | "
                  f"{w['train_ms_per_step']} | {r['bare_wall_ms_per_step']} | "
                  f"{r['ratio_train_to_bare_wall']} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "batch_size": training.BATCH_SIZE,
                       "samples": args.samples, "epochs": args.epochs, "results": rows,
                       "real_path": real}, out, indent=2)


if __name__ == "__main__":
    main()
