"""The training step against its FLOP bound, on the path users run.

For the seed's full-size network (kes2021, width 1, CIFAR-shaped 32x32x3, batch 32), each
transfer (layers 0, 3, 6 and all at once) is timed as the command line and the workers
run it (`run_transfer`, warm: a second call in the process, so tracing is not counted)
and as a bare `model.fit` step. The FLOPs of one training step are counted from the
layers' shapes: the frozen source's layers run forward only, the target's trainable
layers forward and backward (the gradient with respect to the weights and to the input,
each as costly as the forward; the first layer needs no input gradient). Dividing by the
step time gives the FLOP rate reached, shown as a fraction of the machine's own
matrix-product and convolution rates, measured in the same process just before.

    python bench/flop_bound.py [--samples 1024] [--layers 0 3 6 all] [--json out.json] \
        [--precisions float32 mixed_bfloat16]

The count is `bench/flops.py`'s (convolutions and dense layers only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench, as a script too

import keras

from bench.flops import step_flops
from bench.train_throughput import matmul_gflops, measure, real_path, write_npz
from quanta import training
from quanta.models import build_model, freeze

SHAPE = (32, 32, 3)


def conv_gflops(repeats: int = 10) -> float:
    """The machine's float32 convolution rate on a shape of the network's own (its widest
    3x3 convolution at 8x8, batch 32), forward only."""
    import tensorflow as tf

    x = tf.random.uniform((32, 8, 8, 512))
    kernel = tf.random.uniform((3, 3, 512, 512))
    tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    flops = 2 * 32 * 8 * 8 * 3 * 3 * 512 * 512 * repeats
    return round(flops / (time.perf_counter() - start) / 1e9, 1)


def target_of(layer: int | None) -> keras.Model:
    source = build_model(SHAPE, 10, name="source")
    freeze(source)
    return build_model(SHAPE, 10, source=source,
                       transfer_layers=list(range(7)) if layer is None else [layer],
                       name="target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--layers", nargs="+", default=["0", "3", "6", "all"])
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=["float32", "mixed_bfloat16", "mixed_float16"],
                        help="each layer's steps in each of these, alternated; a mixed "
                        "one is compared with the 16-bit matrix product's rate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layers = [None if value == "all" else int(value) for value in args.layers]
    rates = {"matmul_gflops": matmul_gflops(), "conv_gflops": conv_gflops()}
    half = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
    for precision in args.precisions:
        if precision in half:
            rates[f"matmul_{half[precision]}_gflops"] = matmul_gflops(dtype=half[precision])
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        data = write_npz(workdir / "data.npz", args.samples)
        source = real_path("source", None, "cli", workdir, data, None, args.samples, 1, 1.0)
        weights = Path(source["result"].training_dir) / "source.weights.h5"
        for layer in layers:
            flops = step_flops(target_of(layer), training.BATCH_SIZE)
            for precision in args.precisions:
                bare = measure("transfer", layer, True, args.samples, 1.0, precision)
                real_path("transfer", layer, "cli", workdir, data, weights, args.samples, 1,
                          1.0, precision)
                warm = real_path("transfer", layer, "cli", workdir, data, weights,
                                 args.samples, 2, 1.0, precision)
                step_s = warm["steps_ms_per_step"] / 1000
                reached = flops["gflop"] / step_s
                matmul = rates[f"matmul_{half[precision]}_gflops" if precision in half
                               else "matmul_gflops"]
                rows.append({
                    "layer": "all" if layer is None else layer, "precision": precision,
                    **{k: round(v, 2) for k, v in flops.items()},
                    "real_ms_per_step": warm["steps_ms_per_step"],
                    "bare_ms_per_step": bare["ms_per_step"],
                    "gflops_reached": round(reached, 1),
                    "of_matmul": round(reached / matmul, 3),
                    "of_conv": round(reached / rates["conv_gflops"], 3),
                })
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
              **rates, "rows": rows}
    print(", ".join(f"{name} {value}" for name, value in rates.items())
          + f"; load {report['load_before']} -> {report['load_after']}")
    print("| layer | precision | GFLOP/step (frozen + trainable) | real ms/step | bare ms/step "
          "| GFLOP/s | of matmul (same precision) | of float32 conv |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['layer']} | {row['precision']} | {row['gflop']} ({row['frozen_gflop']} + "
              f"{row['trainable_gflop']}) | {row['real_ms_per_step']} | "
              f"{row['bare_ms_per_step']} | {row['gflops_reached']} | {row['of_matmul']} | "
              f"{row['of_conv']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
