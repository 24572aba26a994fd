"""A QUANTA transfer on a researcher's own network: its training step against a bare
`model.fit` of the same network, and the share of the step spent in the frozen source.

    .venv/bin/python bench/own_network.py [--network MobileNetV3Small] [--input-size 96] \
        [--samples 256] [--epochs 2] [--repetitions 5] [--layers NAME ...] \
        [--hooks cli] [--seed N] [--json out.json]

Why this exists: with a user's network (`quanta -sm MODEL.keras -l LAYER`) the target is
rewired from the network's own graph (`quanta.any_network`), so its step costs what the
network costs, plus the frozen source run up to the named layer, plus the QUANTA layer's
mix. This measures those costs on the path users run, so that the difference to a plain
`model.fit` of their network is known and where it goes is visible.

What is run, all in one process:

- a `keras.applications` network built with `weights=None` (nothing is downloaded) at a
  small input, saved as a `.keras` file, as a user brings it; data: the offline `digits`
  task, which the library itself resizes to the network's input (`OwnSource.prepare`,
  i.e. `quanta.image_folders.fit_images`);
- **transfer**: `quanta.transfer.run_transfer` with that file as `source_model`, at a
  shallow, a middle and a deep named layer (by default picked from the graph's
  transferable layers that hold weights: about a tenth of the way in, half way, and the
  last before the head), with the command line's progress bar (`--hooks cli`) or a
  worker's hooks (`--hooks worker`);
- **bare**: `model.fit` on the prepared arrays of the same `.keras` file loaded afresh
  (same architecture and head), compiled with `quanta.training.compile_model` (the
  library's optimizer, loss and metrics), batch 32, same samples in the same order, no
  shuffling.

  Both are timed two ways. The median step: the time from one batch's start to the
  next (a callback that acts only as a batch starts, as the library's own hooks do),
  the first step (tracing) left out; it is what the network costs step against step,
  and a burst of other work on the machine moves it little. The steps phase: the
  library's own clock, `result.train_timings["steps"]` (from the second batch's start
  to the end of training, epoch ends included) over the steps after the first, and the
  same definition for the bare fit: what the user waits for per step;
- **source cut**: the forward pass of `quanta.any_network.source_cut(source, [layer])`
  alone, as the target calls it (`training=True`: the frozen BatchNormalization runs in
  inference anyway), in a `tf.function`, on one batch of 32, median of several calls;
  and the whole source's forward for comparison (the cut never runs past the deepest
  named layer).

Every repetition runs all of them one after the other (bare, each layer's transfer,
the forwards, these taken in turn call by call), in reverse order on every other
repetition, after one warm-up round that traces every model; the tables give the
medians over the repetitions, and the range of the ratios of each repetition. Only
ratios from one run compare: the machine's speed varies from hour to hour, so its load
average is recorded with the figures (this benchmark's own threads count in it too).
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from quanta import training
from quanta.any_network import OwnSource, graph_of_file, own_source, source_cut
from quanta.datasets import DIGITS_TRAIN_SIZE, load_dataset
from quanta.progress import EpochProgressBar
from quanta.transfer import run_transfer
from quanta_spec import TransferSpec
from quanta_spec.images import DEFAULT_RESIZE_METHOD, RESIZE_METHODS
from quanta_spec.keras_graph import NetworkGraph
from quanta_spec.streams import Stream

#: Networks this benchmark builds, and the preprocessing a user would give each (a `.keras`
#: file defaults to `none`: MobileNetV3 rescales inside, MobileNetV2 does not).
NETWORKS: dict[str, str | None] = {
    "MobileNetV3Small": None,
    "MobileNetV2": "keras.applications.mobilenet_v2.preprocess_input",
}
#: Layer classes that hold weights: the default layers are picked among them, so that
#: each named layer is a real stage of the network, not a padding or a reshape.
WEIGHTED = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
#: Where the default shallow, middle and deep layers sit among the weighted transferable
#: layers (the deep one is the last before the head).
DEFAULT_DEPTHS = (0.1, 0.5, 1.0)
#: The workers' defaults (quanta_jobs.settings), for `--hooks worker`.
WORKER_CHECKPOINT_INTERVAL_S = 30.0


# -- the network and its layers ----------------------------------------------------------
def save_network(name: str, size: int, classes: int, path: Path) -> Path:
    """`keras.applications.NAME` without ImageNet weights at `size`x`size`x3, saved as a
    `.keras` file: what a researcher brings to `quanta -sm`."""
    builder = getattr(keras.applications, name)
    builder(input_shape=(size, size, 3), weights=None, classes=classes).save(path)
    return path


def pick_layers(graph: NetworkGraph, depths: Sequence[float] = DEFAULT_DEPTHS
                ) -> list[str]:
    """A shallow, a middle and a deep named layer: weighted transferable layers at
    `depths` of the way through them (1.0: the last before the head)."""
    transferable = set(graph.transferable)
    weighted = [layer.name for layer in graph.layers
                if layer.name in transferable and layer.class_name in WEIGHTED]
    chosen = [weighted[round(d * (len(weighted) - 1))] for d in depths]
    return list(dict.fromkeys(chosen))  # distinct, in graph order


def describe_layer(graph: NetworkGraph, name: str) -> dict[str, Any]:
    """Where a named layer sits: its position among the transferable layers, its class
    and output shape (what the QUANTA layer mixes)."""
    order = graph.transferable
    layer = next(layer for layer in graph.layers if layer.name == name)
    return {"name": name, "class": layer.class_name,
            "output_shape": list(layer.output_shape or ()),
            "position": order.index(name) + 1, "of": len(order)}


# -- the three measurements ---------------------------------------------------------------
class StepStarts(keras.callbacks.Callback):
    """When each training batch starts, on both sides alike. It acts only as a batch
    starts (as the library's own hooks and progress bar do), so no step waits for the
    previous one's results; the time from one start to the next is that step's time."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[float] = []

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.starts.append(time.perf_counter())

    def median_step_s(self) -> float:
        """The median step after the first (which traces a model not traced yet): robust
        to the machine's bursts and to the work between epochs, unlike a mean."""
        intervals = np.diff(self.starts)[1:]
        if not len(intervals):
            raise ValueError("a median step needs at least three steps")
        return float(np.median(intervals))


def bare_step(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int) -> dict:
    """One bare `model.fit` on the arrays: its median step, and its time per step defined
    as the library defines `train_timings["steps"]` (from the second batch's start to the
    end of `fit`, over the steps after the first)."""
    clock = StepStarts()
    start = time.perf_counter()
    model.fit(x, y, batch_size=training.BATCH_SIZE, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[clock])
    end = time.perf_counter()
    return {"step_s": clock.median_step_s(),
            "steps_phase_per_step_s": (end - clock.starts[1]) / (len(clock.starts) - 1),
            "first_step_s": clock.starts[1] - clock.starts[0], "fit_s": end - start}


class _WorkerHooks:
    """A worker's progress hook and cancellation check, without its database."""

    def on_epoch(self, event: object) -> None:
        json.dumps(dataclasses.asdict(event))  # type: ignore[call-overload]

    def should_cancel(self) -> bool:
        return False


def transfer_step(spec: TransferSpec, layer: str, folder: Path, hooks: str, steps: int
                  ) -> dict:
    """One `run_transfer` at `layer` as the command line (`cli`) or a worker (`worker`)
    calls it: its median step, its time per step from the library's own `train_timings`
    (the steps after the first), and its phases."""
    spec = spec.model_copy(update={"layer_to_transfer": layer})
    out = Path(tempfile.mkdtemp(dir=folder))
    clock = StepStarts()
    extra: dict[str, Any]
    if hooks == "worker":
        worker = _WorkerHooks()
        extra = dict(on_epoch=worker.on_epoch, should_cancel=worker.should_cancel,
                     checkpoint_dir=out / "checkpoints",
                     checkpoint_interval_s=WORKER_CHECKPOINT_INTERVAL_S, callbacks=[clock])
    else:
        extra = dict(callbacks=[EpochProgressBar(spec.nb_of_runs), clock])
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
        result = run_transfer(spec, out, **extra)
    parts = result.train_timings
    assert len(clock.starts) == steps, f"{len(clock.starts)} steps, expected {steps}"
    return {"step_s": clock.median_step_s(),
            "steps_phase_per_step_s": parts["steps"] / (steps - 1),
            "first_step_s": parts["first_step"],
            "phases_s": {k: round(v, 3) for k, v in result.timings.items()},
            "train_parts_s": {k: round(v, 3) for k, v in parts.items()}}


def forward_function(model: keras.Model, batch: np.ndarray) -> Callable[[], None]:
    """One traced forward of `model` on `batch`, as the target calls the cut
    (`training=True`). On the CPU a `tf.function` call returns once its work is done; a
    mean over the outputs (a few MB at most) makes sure of it and costs far less than the
    forward."""
    import tensorflow as tf

    images = tf.convert_to_tensor(batch)

    @tf.function(jit_compile=False)
    def forward(x: Any) -> Any:
        outputs = model(x, training=True)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        return tf.add_n([tf.reduce_mean(o) for o in outputs])

    forward(images).numpy()  # traces
    return lambda: forward(images).numpy()


def forwards_interleaved(functions: dict[str, Callable[[], None]], calls: int
                         ) -> dict[str, dict]:
    """The median of `calls` calls of each forward, the forwards taken in turn (one call
    of each, then again), so that the machine's drift within the measurement reaches all
    of them alike and their ratios hold."""
    durations: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(calls):
        for name, forward in functions.items():
            start = time.perf_counter()
            forward()
            durations[name].append(time.perf_counter() - start)
    return {f"forward {name}": {"step_s": statistics.median(d)}
            for name, d in durations.items()}


# -- the run ------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One thing timed each repetition: its name and how to time it (results by key)."""

    name: str
    measure: Callable[[], dict[str, dict]]


def machine() -> dict[str, Any]:
    """What the figures were measured on: they compare only within one run."""
    import tensorflow as tf

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load: on a shared machine, how much the figures can say."""
    return [round(v, 2) for v in os.getloadavg()]


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Builds the network, then the warm-up round and the repetitions; medians, ratios."""
    path = save_network(args.network, args.input_size, 10, folder / f"{args.network}.keras")
    graph = graph_of_file(path)
    layers = list(args.layers) if args.layers else pick_layers(graph)
    graph.check_layers(layers)
    spec = TransferSpec(source_task="digits", target_task="digits", source_model=str(path),
                        layer_to_transfer=layers[0], nb_of_target_samples=args.samples,
                        nb_of_target_epochs=args.epochs, seed=args.seed,
                        preprocess=args.preprocess or NETWORKS.get(args.network),
                        resize_method=args.resize_method)
    # The library's own loader and resize, as run_transfer prepares the target's data.
    own: OwnSource = own_source(str(path), spec.preprocess, spec.resize_method)
    data = own.prepare(load_dataset("digits").take(args.samples))
    x, y = data.x_train, training.one_hot(data.y_train, data.nb_classes)

    # The bare network: the user's file loaded afresh (trainable, its own head), under the
    # same determinism setting as the transfer's target.
    training.set_determinism(args.seed, Stream.TARGET_INIT)
    bare = training.compile_model(keras.saving.load_model(path, compile=False))
    batch = x[:training.BATCH_SIZE]
    forwards = {"whole source": forward_function(own.model, batch)}
    for layer in layers:
        cut = source_cut(own.model, [layer], inference=spec.source_inference_mode)
        forwards[layer] = forward_function(cut, batch)

    steps = args.epochs * training.steps_per_epoch(len(y))
    cases = [Case("bare", lambda: {"bare": bare_step(bare, x, y, args.epochs)})]
    cases += [Case(f"transfer {layer}", lambda layer=layer: {
        f"transfer {layer}": transfer_step(spec, layer, folder, args.hooks, steps)})
        for layer in layers]
    cases.append(Case("forwards", lambda: forwards_interleaved(forwards, args.forward_calls)))

    for case in cases:  # warm-up: traces every model, not counted
        case.measure()
        print(f"warm-up: {case.name}", flush=True)
    raw: dict[str, list[dict]] = {}
    for rep in range(args.repetitions):
        for case in cases if rep % 2 == 0 else cases[::-1]:
            for key, result in case.measure().items():
                raw.setdefault(key, []).append(result)
                print(f"repetition {rep + 1}: {key:40} {result['step_s'] * 1000:8.1f} ms",
                      flush=True)

    def median_ms(key: str, field: str = "step_s") -> float:
        return statistics.median(r[field] for r in raw[key]) * 1000

    def paired(key: str, field: str) -> list[float]:
        """transfer / bare of each repetition: their spread says how far to trust the
        median ratio on a machine whose speed moves between minutes."""
        return [round(t[field] / b[field], 3)
                for t, b in zip(raw[key], raw["bare"], strict=True)]

    bare_ms = median_ms("bare")
    bare_phase_ms = median_ms("bare", "steps_phase_per_step_s")
    rows = []
    for layer in layers:
        key = f"transfer {layer}"
        transfer_ms, cut_ms = median_ms(key), median_ms(f"forward {layer}")
        phase_ms = median_ms(key, "steps_phase_per_step_s")
        rows.append({
            **describe_layer(graph, layer),
            "cut_forward_ms": round(cut_ms, 1),
            # Median steps: the network's cost, step against step.
            "transfer_step_ms": round(transfer_ms, 1),
            "bare_step_ms": round(bare_ms, 1),
            "ratio_transfer_to_bare": round(transfer_ms / bare_ms, 3),
            "ratios_per_repetition": paired(key, "step_s"),
            # The library's train_timings["steps"] per step: what the user waits, epoch
            # ends included (the bare fit's data adapter starts each epoch anew).
            "transfer_steps_phase_ms": round(phase_ms, 1),
            "bare_steps_phase_ms": round(bare_phase_ms, 1),
            "ratio_steps_phase": round(phase_ms / bare_phase_ms, 3),
            "ratios_steps_phase_per_repetition": paired(key, "steps_phase_per_step_s"),
            "cut_share_of_transfer_step": round(cut_ms / transfer_ms, 3),
            # What the cut does not explain: the QUANTA layer's mix and the rest (the
            # data pipeline, noise; negative when the cut overlaps the target's layers).
            "rest_ms": round(transfer_ms - bare_ms - cut_ms, 1),
        })
    return {
        "network": args.network, "input_shape": [args.input_size, args.input_size, 3],
        "params": graph.params, "transferable_layers": len(graph.transferable),
        "head": graph.head, "preprocess": spec.preprocess, "hooks": args.hooks,
        "seed": args.seed, "samples": len(y), "epochs": args.epochs,
        "steps_per_call": steps,
        "batch_size": training.BATCH_SIZE, "repetitions": args.repetitions,
        "forward_calls": args.forward_calls,
        "whole_source_forward_ms": round(median_ms("forward whole source"), 1),
        "bare_step_ms": round(bare_ms, 1), "bare_steps_phase_ms": round(bare_phase_ms, 1),
        "layers": rows, "raw": raw,
    }


def _spread(values: list[float]) -> str:
    return f"{min(values)}–{max(values)}"


def print_table(out: dict[str, Any]) -> None:
    print(f"\n{out['network']} {out['input_shape']}, {out['params']:,} parameters, "
          f"{out['transferable_layers']} transferable layers; {out['samples']} digits, "
          f"{out['epochs']} epoch(s) ({out['steps_per_call']} steps of "
          f"{out['batch_size']}), medians of {out['repetitions']} repetitions; hooks "
          f"{out['hooks']}, seed {out['seed']}")
    print("| named layer | position | output | source cut forward ms | transfer median "
          "step ms | bare median step ms | transfer / bare (range) | steps phase per step: "
          "transfer / bare ms | ratio (range) | cut share of the step | rest ms |")
    print("|---" * 11 + "|")
    for r in out["layers"]:
        shape = "×".join(str(d) for d in r["output_shape"][1:])
        print(f"| `{r['name']}` ({r['class']}) | {r['position']} / {r['of']} | {shape} | "
              f"{r['cut_forward_ms']} | {r['transfer_step_ms']} | {r['bare_step_ms']} | "
              f"**{r['ratio_transfer_to_bare']}** ({_spread(r['ratios_per_repetition'])}) | "
              f"{r['transfer_steps_phase_ms']} / {r['bare_steps_phase_ms']} | "
              f"{r['ratio_steps_phase']} ({_spread(r['ratios_steps_phase_per_repetition'])})"
              f" | {r['cut_share_of_transfer_step']} | {r['rest_ms']} |")
    whole = out["whole_source_forward_ms"]
    print(f"| whole source, for comparison | | | {whole} | | {out['bare_step_ms']} | | | | "
          f"{whole / out['bare_step_ms']:.3f} of a bare step | |")
    m = out["machine"]
    print(f"\nload average at start {m['load_average_start']}, at end "
          f"{m['load_average_end']}; wall {out['wall_s']:.0f} s; {m['cpu_count']} CPUs, "
          f"TensorFlow {m['tensorflow']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="MobileNetV3Small", choices=sorted(NETWORKS))
    parser.add_argument("--input-size", type=int, default=96,
                        help="height and width of the network's input (at least 32)")
    parser.add_argument("--samples", type=int, default=256,
                        help="digits training samples (first N; at most 1440)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--layers", nargs="*", default=None,
                        help="named layers to transfer (default: a shallow, a middle and a "
                        "deep one, picked from the graph)")
    parser.add_argument("--hooks", default="cli", choices=("cli", "worker"),
                        help="run_transfer as the command line or a worker calls it")
    parser.add_argument("--seed", type=int, default=None,
                        help="the transfer's seed (default: none, as the command line)")
    parser.add_argument("--preprocess", default=None,
                        help="as quanta's --preprocess (default: the network's own)")
    parser.add_argument("--resize_method", default=DEFAULT_RESIZE_METHOD,
                        choices=RESIZE_METHODS)
    parser.add_argument("--forward-calls", type=int, default=20,
                        help="calls of each forward per repetition, whose median is taken")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    import tensorflow as tf

    # Its retracing warning counts the train functions of the models built here (one per
    # model, as intended), not a function traced again.
    tf.get_logger().setLevel("ERROR")
    if args.epochs * training.steps_per_epoch(min(args.samples, DIGITS_TRAIN_SIZE)) < 3:
        parser.error("give at least three steps (samples x epochs above 64): the median "
                     "step leaves the first out")

    start, load_start = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory() as folder:
        out = run(args, Path(folder))
    out["machine"] = {**machine(), "load_average_start": load_start,
                      "load_average_end": load_average()}
    out["wall_s"] = round(time.perf_counter() - start, 1)
    print_table(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
