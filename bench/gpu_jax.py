"""The seed's training step on a GPU through Keras's JAX backend, for a GPU host where
TensorFlow cannot be installed (no package registry, and TensorFlow's GPU wheels with
CUDA's libraries are about 2 GB), but JAX can run.

The network and its training are the library's own: `quanta.models.build_model`
(`kes2021` at full width, a frozen source and a target with the QUANTA layer at the layers
asked) and `quanta.training.compile_model` (the QUANTA optimizer, the loss and the eight
metrics), trained with `model.fit` on uint8 arrays at batch 32, as
`bench/train_throughput.py`'s bare step does. It is not the path users run on a GPU
(`tf.data`, op determinism and a worker's hooks are TensorFlow's): read its figures as
what a GPU makes of this network's step, not as a worker's.

Four parts, each printed as it ends and written to `--json`:

1. the GPU's own rates: an 8192-cube matrix product in float32 and bfloat16;
2. the step: milliseconds per step for each precision (float32, mixed_float16,
   mixed_bfloat16) and layer, its GFLOP/s (`bench/flops.py`'s count) and the fraction of
   the matrix product's rate in the same precision;
3. several workers sharing the GPU: N processes, each with its share of the GPU's memory,
   building and compiling its own model, then training together for `--window` seconds;
   the aggregate steps per second and each one's peak GPU memory;
4. the paper's protocol (7 layers x 30 runs x 60 epochs of CIFAR-10's 50000 images),
   estimated from the measured steps, with its arithmetic.

    KERAS_BACKEND=jax python bench/gpu_jax.py [--layers 0 3 6] [--workers 1 2 4 8] \
        [--json out.json] [--budget 420]

`--budget` bounds the whole run in seconds: a part that would not fit is skipped, and
what was measured is written all the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
# This process takes GPU memory as it needs it (the workers of part 3 take theirs up
# front, each its share), and every process shares one cache of compiled steps, so that
# workers do not each spend the compile the parent already did.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / "quanta-bench-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench and the library, as a script too

#: The paper's protocol (KES 2021): layers, runs per layer, epochs, CIFAR-10's training set.
PROTOCOL = {"layers": 7, "runs": 30, "epochs": 60, "train_images": 50000}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SHAPE = (32, 32, 3)


def _now() -> float:
    return time.perf_counter()


def matmul_tflops(dtype: str, n: int = 8192, repeats: int = 10) -> float:
    """The GPU's matrix-product rate in `dtype` (the mean of `repeats` after a warm-up)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype=dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype=dtype)
    product = jax.jit(jnp.matmul)
    for _ in range(3):
        product(a, b).block_until_ready()
    start = _now()
    for _ in range(repeats):
        out = product(a, b)
    out.block_until_ready()
    return round(2 * n**3 * repeats / (_now() - start) / 1e12, 1)


def build(layer: int | None, precision: str, width: float = 1.0):
    """The source (float32, frozen) and a compiled target, as the library builds them."""
    import keras

    from quanta import training
    from quanta.models import build_model, freeze

    source = build_model(SHAPE, 10, width_multiplier=width, name="source")
    freeze(source)
    keras.config.set_dtype_policy(precision)
    try:
        target = build_model(SHAPE, 10, source=source,
                             transfer_layers=list(range(7)) if layer is None else [layer],
                             width_multiplier=width, name="target")
    finally:
        keras.config.set_dtype_policy("float32")
    return training.compile_model(target)


def data(samples: int):
    import numpy as np

    from quanta import training

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(samples, *SHAPE), dtype=np.uint8)
    return x, training.one_hot(rng.integers(0, 10, size=samples), 10)


def peak_mib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return round(peak / 2**20) if peak else None


def step(layer: int | None, precision: str, samples: int, epochs: int, width: float) -> dict:
    """Milliseconds per step of `model.fit` after a compiling warm-up epoch: the median
    epoch's wall time over its steps (the GPU runs ahead of Python, so single steps are
    not timed)."""
    from bench.flops import step_flops
    from quanta import training

    model = build(layer, precision, width)
    x, y = data(samples)
    start = _now()
    model.fit(x[:256], y[:256], batch_size=training.BATCH_SIZE, epochs=1, verbose=0)
    compile_s = _now() - start
    steps = math.ceil(samples / training.BATCH_SIZE)
    per_epoch = []
    for _ in range(epochs):
        start = _now()
        model.fit(x, y, batch_size=training.BATCH_SIZE, epochs=1, verbose=0)
        per_epoch.append((_now() - start) / steps)
    ms = statistics.median(per_epoch) * 1000
    flops = step_flops(model, training.BATCH_SIZE)
    return {"layer": "all" if layer is None else layer, "precision": precision,
            "compile_s": round(compile_s, 1), "ms_per_step": round(ms, 3),
            "ms_per_step_epochs": [round(s * 1000, 3) for s in per_epoch],
            "gflop_per_step": round(flops["gflop"], 2),
            "tflops_reached": round(flops["gflop"] / ms, 2),  # GFLOP per ms = TFLOP/s
            "peak_mib": peak_mib()}


def child(args: argparse.Namespace) -> None:
    """One worker of part 3: compile, say ready, wait for the start, train for the window."""
    from quanta import training

    model = build(args.layer, args.precision, args.width)
    x, y = data(1024)
    model.fit(x[:256], y[:256], batch_size=training.BATCH_SIZE, epochs=1, verbose=0)
    folder = Path(args.folder)
    (folder / f"ready.{args.index}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    start = _now()
    steps = 0
    while _now() - start < args.window:
        model.fit(x, y, batch_size=training.BATCH_SIZE, epochs=1, verbose=0)
        steps += len(x) // training.BATCH_SIZE
    seconds = _now() - start
    print(json.dumps({"pid": os.getpid(), "steps": steps, "seconds": round(seconds, 2),
                      "steps_per_s": round(steps / seconds, 1), "peak_mib": peak_mib()}),
          flush=True)
    (folder / f"done.{args.index}").touch()
    while not (folder / "exit").exists():  # alive while the parent reads nvidia-smi
        time.sleep(0.01)


def workers(n: int, args: argparse.Namespace, deadline: float) -> dict:
    """N worker processes sharing the GPU, each with 0.9/N of its memory."""
    from bench.gpu_workers import gpu_memory_by_pid
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="true",
               XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / n:.3f}")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        command = [sys.executable, __file__, "--child", "--folder", name, "--precision",
                   args.worker_precision, "--window", str(args.window), "--width",
                   str(args.width), "--layer", "6"]
        procs = [subprocess.Popen([*command, "--index", str(i)], env=env,
                                  stdout=subprocess.PIPE, text=True) for i in range(n)]
        start = _now()
        try:
            while sum((folder / f"ready.{i}").exists() for i in range(n)) < n:
                if _now() > deadline or any(p.poll() is not None for p in procs):
                    return {"workers": n, "error": "a worker failed or the budget ran out "
                            "before all had compiled"}
                time.sleep(0.05)
            ready_s = _now() - start
            (folder / "go").touch()
            while sum((folder / f"done.{i}").exists() for i in range(n)) < n:
                if _now() > deadline + args.window or any(p.poll() is not None
                                                          for p in procs):
                    return {"workers": n, "error": "a worker failed or ran out of time"}
                time.sleep(0.05)
            smi = gpu_memory_by_pid()
            (folder / "exit").touch()
            rows = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
                    for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    for row in rows:
        row["nvidia_smi_mib"] = smi.get(row["pid"])
    total = sum(r["steps_per_s"] for r in rows)
    return {"workers": n, "precision": args.worker_precision, "ready_s": round(ready_s, 1),
            "steps_per_s": round(total, 1), "per_worker": rows}


def protocol(steps: list[dict], best_workers: dict | None) -> dict:
    """The paper's protocol from the measured steps: each layer's step interpolated
    between the measured layers (float32 on one worker), then with the best aggregate."""
    per_epoch = math.ceil(PROTOCOL["train_images"] / 32)
    measured = {r["layer"]: r["ms_per_step"] for r in steps
                if r["precision"] == "float32" and isinstance(r["layer"], int)}
    if not measured:
        return {}
    known = sorted(measured)

    def ms(k: int) -> float:
        lower = max((m for m in known if m <= k), default=known[0])
        upper = min((m for m in known if m >= k), default=known[-1])
        if lower == upper:
            return measured[lower]
        return measured[lower] + (measured[upper] - measured[lower]) * (k - lower) / (
            upper - lower)

    per_layer_ms = [round(ms(k), 3) for k in range(PROTOCOL["layers"])]
    steps_per_layer = PROTOCOL["runs"] * PROTOCOL["epochs"] * per_epoch
    seconds = steps_per_layer * sum(per_layer_ms) / 1000
    out = {"steps_per_epoch": per_epoch, "steps_per_layer": steps_per_layer,
           "total_steps": steps_per_layer * PROTOCOL["layers"],
           "ms_per_step_by_layer": per_layer_ms, "one_worker_hours": round(seconds / 3600, 2),
           "arithmetic": f"{PROTOCOL['runs']} runs x {PROTOCOL['epochs']} epochs x "
                         f"{per_epoch} steps x sum over 7 layers of ms/step "
                         f"({sum(per_layer_ms):.2f} ms) = {seconds / 3600:.2f} h"}
    if best_workers and "steps_per_s" in best_workers and 6 in measured:
        # The aggregate was measured on layer 6, the dearest: scale each layer by its step.
        speedup = best_workers["steps_per_s"] * measured[6] / 1000
        out["best_workers"] = best_workers["workers"]
        out["aggregate_speedup_on_layer_6"] = round(speedup, 2)
        out["shared_gpu_hours"] = round(seconds / speedup / 3600, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", default=["0", "3", "6"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                        choices=PRECISIONS)
    parser.add_argument("--mixed-layers", nargs="+", default=["6"],
                        help="layers timed in the mixed precisions too")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--workers", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--worker-precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--budget", type=float, default=420.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--layer", type=int, default=6, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    deadline = _now() + args.budget
    import jax
    import keras

    report: dict = {"jax": jax.__version__, "keras": keras.__version__,
                    "backend": keras.backend.backend(),
                    "devices": [str(d) for d in jax.devices()], "steps": [], "workers": []}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    report["tflops"] = {d: matmul_tflops(d) for d in ("float32", "bfloat16")}
    print(f"{report['devices']}: matmul float32 {report['tflops']['float32']} TFLOP/s, "
          f"bfloat16 {report['tflops']['bfloat16']} TFLOP/s", flush=True)
    save()
    plan = [(precision, layer) for precision in args.precisions
            for layer in (args.layers if precision == "float32" else args.mixed_layers)]
    for precision, value in plan:
        if _now() > deadline - 60:
            print(f"skipped {precision} layer {value}: over the budget", flush=True)
            continue
        layer = None if value == "all" else int(value)
        row = step(layer, precision, args.samples, args.epochs, args.width)
        rate = report["tflops"]["float32" if precision == "float32" else "bfloat16"]
        row["of_matmul"] = round(row["tflops_reached"] / rate, 3)
        report["steps"].append(row)
        print(f"layer {row['layer']} {precision}: {row['ms_per_step']} ms/step "
              f"({row['tflops_reached']} TFLOP/s, {row['of_matmul']} of the matmul), "
              f"compile {row['compile_s']} s, peak {row['peak_mib']} MiB", flush=True)
        save()
    keras.backend.clear_session(free_memory=True)  # the steps' models leave the GPU
    for n in args.workers:
        if _now() > deadline - args.window - 45:
            print(f"skipped {n} workers: over the budget", flush=True)
            continue
        result = workers(n, args, deadline)
        report["workers"].append(result)
        if "error" in result:
            print(f"{n} workers: {result['error']}", flush=True)
        else:
            print(f"{n} workers ({result['precision']}, layer 6): {result['steps_per_s']} "
                  f"steps/s together, peak MiB each "
                  f"{[w['peak_mib'] for w in result['per_worker']]}, nvidia-smi "
                  f"{[w['nvidia_smi_mib'] for w in result['per_worker']]}", flush=True)
        save()
    done = [w for w in report["workers"] if "steps_per_s" in w]
    report["protocol"] = protocol(report["steps"],
                                  max(done, key=lambda w: w["steps_per_s"]) if done else None)
    if report["protocol"]:
        print("the paper's protocol: " + report["protocol"]["arithmetic"]
              + (f"; with {report['protocol']['best_workers']} workers sharing the GPU "
                 f"{report['protocol']['shared_gpu_hours']} h"
                 if "shared_gpu_hours" in report["protocol"] else ""), flush=True)
    save()


if __name__ == "__main__":
    main()
