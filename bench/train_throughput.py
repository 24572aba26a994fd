"""Training throughput of the full-size network on synthetic CIFAR-shaped data.

Prints milliseconds per step and samples per second for source training and for
QUANTA transfers, seeded (op determinism) and unseeded, batch 32, after a warm-up
epoch that absorbs tracing. Compare with the reference's figures in the README.

    python bench/train_throughput.py [--samples 1024] [--layers 0 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from quanta import training
from quanta.models import build_model, freeze, source_trunk, with_source_inputs


class StepTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.durations: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def measure(kind: str, layer: int | None, seeded: bool, samples: int, width: float,
            precision: str = "float32", cached_source: bool = False) -> dict:
    """ms per step of one configuration; `cached_source` trains with precomputed source
    features (the `source_inference_mode` option) instead of running the source each step."""
    training.set_determinism(0 if seeded else None)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(samples, 32, 32, 3), dtype=np.uint8)
    y = training.one_hot(rng.integers(0, 10, size=samples), 10)
    source = build_model((32, 32, 3), 10, width_multiplier=width, name="source")
    inputs: list[np.ndarray] | np.ndarray = x
    keras.config.set_dtype_policy(precision)
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
    model.fit(inputs, y, batch_size=training.BATCH_SIZE, epochs=1, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - start
    step = statistics.median(timer.durations)
    return {
        "kind": kind + (" (cached source)" if cached_source else ""),
        "layer": "all" if kind == "transfer" and layer is None else layer,
        "seeded": seeded,
        "precision": precision,
        "ms_per_step": round(step * 1000, 1),
        "samples_per_s": round(training.BATCH_SIZE / step, 1),
        "epoch_samples_per_s": round(samples / wall, 1),
    }


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """The machine's float32 matrix-product speed, to compare figures across machines."""
    import tensorflow as tf

    a = tf.random.uniform((n, n))
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
                                args.precision, cached))
            r = rows[-1]
            print(f"{r['kind']:24} layer {r['layer']!s:4} seeded={r['seeded']!s:5} "
                  f"{r['ms_per_step']:7.1f} ms/step {r['samples_per_s']:8.1f} samples/s",
                  flush=True)
    import tensorflow as tf

    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "matmul_2048_gflops": matmul_gflops(),
        "one_thread": args.one_thread,
    }
    print(f"\n{machine}")
    print(f"precision {args.precision}, batch {training.BATCH_SIZE}, {args.samples} samples")
    print("| run | layer | seeded | ms/step | samples/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['layer'] if r['layer'] is not None else '-'} | "
              f"{'yes' if r['seeded'] else 'no'} | {r['ms_per_step']} | {r['samples_per_s']} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "batch_size": training.BATCH_SIZE,
                       "samples": args.samples, "results": rows}, out, indent=2)


if __name__ == "__main__":
    main()
