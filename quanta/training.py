"""Compiling, seeding, fitting and evaluating, as the reference does.

Adam (learning rate 2e-4, weight decay 1e-6), categorical cross-entropy on one-hot
labels, batch size 32, and the reference's eight metrics. Batches come in the same order
every epoch, as in the reference, unless `shuffle` asks for a reshuffle per epoch. The
quantas are recorded when training starts and after every epoch.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from quanta.errors import Cancelled, QuantaError
from quanta.layer import quanta_layers
from quanta.optimizer import QuantaAdam
from quanta.results import Timings
from quanta_spec.streams import Stream, stream_seed, stream_seeds

BATCH_SIZE = 32
LEARNING_RATE = 2e-4
WEIGHT_DECAY = 1e-6

#: Called after every epoch with (epoch index, metrics, current quantas by layer number).
EpochHook = Callable[[int, dict[str, float], dict[str, dict[str, float]]], None]
#: Asked between batches (see `CANCEL_CHECK_S`); True stops training (raises `Cancelled`).
CancelCheck = Callable[[], bool]


def metrics() -> list[keras.metrics.Metric]:
    """The reference's metrics, fresh instances for one model."""
    # Explicit names: Keras would otherwise number a second model's metrics ("precision_2").
    return [
        keras.metrics.CategoricalAccuracy(name="categorical_accuracy"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.FalsePositives(name="false_positives"),
        keras.metrics.FalseNegatives(name="false_negatives"),
        keras.metrics.TruePositives(name="true_positives"),
        keras.metrics.TrueNegatives(name="true_negatives"),
        keras.metrics.TopKCategoricalAccuracy(k=3, name="top_k_categorical_accuracy"),
    ]


def _jit_compile() -> bool | str:
    """XLA only where it pays: Keras's "auto" turns it on for CPUs too, where it made
    these training steps slower, not faster. Other backends (JAX, for a GPU benchmark)
    compile their steps as they always do."""
    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf

    return "auto" if tf.config.list_physical_devices("GPU") else False


def compile_model(model: keras.Model, quanta_learning_rate_multiplier: float = 1.0
                  ) -> keras.Model:
    """Compiles `model` and builds its optimizer now.

    Keras otherwise creates the optimizer's variables while tracing the first training
    step, and a `tf.function` that creates variables is traced a second time: building
    them first halves the cost of a new model's first epoch (about 2 s at width 0.25 on
    two CPU cores). The variables start at zero either way.
    """
    model.compile(
        jit_compile=_jit_compile(),
        optimizer=QuantaAdam(quanta_learning_rate_multiplier, learning_rate=LEARNING_RATE,
                             weight_decay=WEIGHT_DECAY),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=metrics(),
    )
    model.optimizer.build(model.trainable_variables)
    return model


def set_determinism(seed: int | None, stream: Stream) -> None:
    """Seeds Python, NumPy and TensorFlow from `stream` of `seed` and makes TensorFlow's
    ops deterministic.

    Call it right before building a model: Keras draws every initialiser's and every
    Dropout layer's seed from Python's `random` when the layer is made, so the model's
    initial weights come from `stream` alone (`quanta_spec.streams`). Unlike the
    reference, TensorFlow keeps every CPU thread: op determinism alone makes seeded runs
    repeat exactly. A negative or absent seed turns determinism off again, which matters
    in a worker process that runs many jobs.
    """
    import tensorflow as tf

    if seed is None or seed < 0:
        # TensorFlow exports no way back; its own config module has one.
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()
        return
    value = stream_seed(seed, stream)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(value)
    np.random.seed(value)
    _seed_keras(value)
    tf.config.experimental.enable_op_determinism()


def _seed_keras(value: int) -> None:
    """`keras.utils.set_random_seed(value)`, but TensorFlow's global seed only once per
    process.

    Setting TensorFlow's global seed clears its kernel cache, so every run's first step
    set its kernels up again (about half a second on the seed's network in a warm
    worker). No op of these graphs reads that seed: Keras 3's random ops (initialisers,
    Dropout, augmentation) are stateless and take their seeds from `SeedGenerator`s and
    Python's `random`, seeded here for every run. It is still set once, from the first
    seeded run, so that a TensorFlow op that did read it would be seeded all the same.
    """
    global _TENSORFLOW_SEEDED
    if not _TENSORFLOW_SEEDED:
        keras.utils.set_random_seed(value)
        _TENSORFLOW_SEEDED = True
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, value)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)


_TENSORFLOW_SEEDED = False


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """The random generators of Dropout and augmentation layers, in a stable order.

    Their states are not saved in `.keras` files, so checkpoints keep them aside.
    """
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for name in sorted(vars(layer)):
            value = getattr(layer, name)
            if isinstance(value, keras.random.SeedGenerator):
                found.append(value)
    return found


def rng_states(model: keras.Model) -> list[list[int]]:
    return [[int(v) for v in keras.ops.convert_to_numpy(g.state)] for g in seed_generators(model)]


def set_rng_states(model: keras.Model, states: list[list[int]]) -> None:
    generators = seed_generators(model)
    if len(generators) != len(states):
        raise ValueError(f"{len(states)} random states for {len(generators)} generators")
    for generator, state in zip(generators, states, strict=True):
        generator.state.assign(np.asarray(state, dtype=generator.state.dtype))


def reseed(model: keras.Model, seed: int | None, stream: Stream,
           exclude: keras.Model | None = None) -> None:
    """Restarts the random generators of `model` from `stream` of `seed` (nothing when
    unseeded), leaving those of `exclude`'s layers (a target's frozen source) alone.

    The frozen source is shared by every run of a process, and its Dropout layers still
    draw random numbers while a target trains: without this, a run's result would
    depend on the runs before it. A model's own masks get a stream apart from its
    initial weights, so that no two purposes share draws.
    """
    if seed is None or seed < 0:
        return
    skip = {id(g) for g in seed_generators(exclude)} if exclude is not None else set()
    generators = [g for g in seed_generators(model) if id(g) not in skip]
    for generator, value in zip(generators, stream_seeds(seed, stream, len(generators)),
                                strict=True):
        generator.state.assign(np.asarray([value, 0], dtype=generator.state.dtype))


def one_hot(labels: np.ndarray, nb_classes: int) -> np.ndarray:
    return keras.utils.to_categorical(labels, nb_classes).astype("float32")


def current_quantas(model: keras.Model) -> dict[str, dict[str, float]]:
    """`{"k": {"source": λ_s, "target": λ_t}}` for every QUANTA layer of `model`."""
    out = {}
    for layer in quanta_layers(model):
        lam_s, lam_t = layer.quantas()
        out[str(layer.transferred_layer)] = {"source": lam_s, "target": lam_t}
    return out


@dataclass
class QuantaHistory:
    """The quanta weights and quantas of each QUANTA layer over training."""

    keras_layer_index: dict[str, int] = field(default_factory=dict)
    weights: dict[str, list[list[float]]] = field(default_factory=dict)
    source: dict[str, list[float]] = field(default_factory=dict)
    target: dict[str, list[float]] = field(default_factory=dict)

    def record(self, model: keras.Model) -> None:
        for layer in quanta_layers(model):
            key = str(layer.transferred_layer)
            self.keras_layer_index.setdefault(key, model.layers.index(layer))
            w_s, w_t = layer.weights_pair()
            lam_s, lam_t = layer.quantas()
            self.weights.setdefault(key, []).append([w_s, w_t])
            self.source.setdefault(key, []).append(lam_s)
            self.target.setdefault(key, []).append(lam_t)


@dataclass
class FitResult:
    #: Metrics of each finished epoch, by epoch index.
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    quantas: QuantaHistory = field(default_factory=QuantaHistory)
    #: Test metrics after each epoch, by epoch index (with `fit(test=...)`).
    test_history: dict[int, dict[str, float]] = field(default_factory=dict)
    #: Where this process's training time went (see `_Hooks.record_timings`).
    timings: Timings = field(default_factory=Timings)


#: Model inputs: images, or images and precomputed source features.
Inputs = np.ndarray | tuple[np.ndarray, ...]
#: Called after every finished epoch, e.g. to save a checkpoint.
AfterEpoch = Callable[[keras.Model, FitResult], None]
#: What to test after every epoch: (model, or None for the one trained; x; one-hot y).
Test = tuple[keras.Model | None, np.ndarray, np.ndarray]


def epoch_rows(n: int, seed: int | None, epoch: int, shuffle: bool = False) -> np.ndarray:
    """The rows of epoch `epoch` (0-based), batch after batch: in order (the reference's),
    or with `shuffle` a permutation fixed by `seed` (a data-order stream's seed, see
    `quanta_spec.streams`) and the epoch, each batch's rows in ascending order.

    Fixed by (seed, epoch) alone, so a run that resumes at epoch k sees exactly the
    batches an uninterrupted run would have seen.
    """
    if not shuffle:
        return np.arange(n)
    rng = np.random.default_rng(None if seed is None else [seed, epoch])
    order = rng.permutation(n)
    full = n - n % BATCH_SIZE
    order[:full] = np.sort(order[:full].reshape(-1, BATCH_SIZE), axis=1).reshape(-1)
    order[full:] = np.sort(order[full:])
    return order


def steps_per_epoch(n: int) -> int:
    return -(-n // BATCH_SIZE)


def epoch_dataset(x: Inputs, y: np.ndarray, order_seed: int | None, first_epoch: int,
                  epochs: int, shuffle: bool = False) -> Any:
    """The batches of epochs `first_epoch` to `epochs - 1`, one after the other, as a
    `tf.data.Dataset` of `(x, y)` (`x` a tuple when the model takes several inputs).

    The rows come from `epoch_rows`, computed up front with NumPy; TensorFlow gathers
    each batch from the arrays in its own threads, ahead of the step that needs it. A
    Python `PyDataset` would hand every batch through the interpreter instead.
    """
    import tensorflow as tf

    n = len(y)
    parts = x if isinstance(x, tuple) else (x,)
    if shuffle:
        orders = np.stack([epoch_rows(n, order_seed, e, True)
                           for e in range(first_epoch, epochs)])
        rows = tf.data.Dataset.from_tensor_slices(orders).flat_map(
            lambda order: tf.data.Dataset.from_tensor_slices(order).batch(BATCH_SIZE))
    else:
        rows = tf.data.Dataset.range(n).batch(BATCH_SIZE).repeat(epochs - first_epoch)
    tensors = tuple(tf.convert_to_tensor(part) for part in parts)
    labels = tf.convert_to_tensor(y)

    def gather(batch: Any) -> tuple[Any, Any]:
        inputs = tuple(tf.gather(part, batch) for part in tensors)
        return (inputs if isinstance(x, tuple) else inputs[0]), tf.gather(labels, batch)

    # tf.data's autotuner, on two cores, left one core idle for about a third of every
    # step in about half of the runs (steps 1.6 times as long, the same CPU time spent;
    # bench/flop_bound.py): gathering 32 rows needs no tuning, and two batches ahead
    # keep the step fed. The batches and their order are the same either way.
    options = tf.data.Options()
    options.autotune.enabled = False
    return rows.map(gather).prefetch(2).with_options(options)


#: Training asks `should_cancel` before the first batch, then before a batch that starts
#: at least this many seconds after the last question: a cancellation stops training
#: within this delay plus one batch (plus the caller's own delay, e.g. the worker's
#: database poll), without a Python call that waits for every step's results.
CANCEL_CHECK_S = 0.25


def epoch_logs(quantas: dict[str, dict[str, float]],
               test: dict[str, float] | None) -> dict[str, float]:
    """What an epoch adds to the `logs` the Keras callbacks get, beside the training
    metrics: `lambda_s_K` for the QUANTA layer of layer K, and `test_NAME` for the test
    metrics when the target is tested every epoch."""
    out = {f"lambda_s_{k}": values["source"] for k, values in quantas.items()}
    out.update({f"test_{name}": float(value) for name, value in (test or {}).items()})
    return out


class _Hooks(keras.callbacks.Callback):
    """Quantas, tests, checkpoints and progress after each epoch; cancellation between
    batches. Nothing runs after a batch: a batch-end callback would make Keras wait for
    each step's metrics before starting the next step."""

    def __init__(
        self,
        result: FitResult,
        on_epoch: EpochHook | None,
        should_cancel: CancelCheck | None,
        after_epoch: AfterEpoch | None,
        test: Test | None = None,
    ) -> None:
        super().__init__()
        self.test = test
        self.result = result
        self.on_epoch = on_epoch
        self.should_cancel = should_cancel
        self.after_epoch = after_epoch
        self.cancelled = False
        self._asked = -math.inf
        self.began = time.perf_counter()
        self.first_batch: float | None = None
        self.second_batch: float | None = None
        self.epoch_end_s = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.result.history:  # a resumed run already has its starting point
            self.result.quantas.record(self.model)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        if self.first_batch is None:
            self.first_batch = now
        elif self.second_batch is None:
            self.second_batch = now
        if self.should_cancel is not None and now - self._asked >= CANCEL_CHECK_S:
            self._asked = now
            if self.should_cancel():
                self.cancelled = True
                self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.cancelled:
            return
        start = time.perf_counter()
        if self.second_batch is None:  # an epoch of one batch
            self.second_batch = start
        metrics_ = {name: float(value) for name, value in (logs or {}).items()}
        self.result.history[epoch] = metrics_
        self.result.quantas.record(self.model)
        if self.test is not None:
            # Inference mode draws no random numbers: training goes on exactly as without.
            model, x, y = self.test
            self.result.test_history[epoch] = evaluate(model or self.model, x, y)
        if self.after_epoch is not None:
            self.after_epoch(self.model, self.result)
        quantas = current_quantas(self.model)
        if logs is not None:  # the callbacks after this one (a user's logger) see them
            logs.update(epoch_logs(quantas, self.result.test_history.get(epoch)))
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics_, quantas)
        self.epoch_end_s += time.perf_counter() - start

    def record_timings(self, timings: Timings) -> None:
        """Where the call's time went: setting up the data (`setup`), the first step
        (with tracing, for a model not traced yet), the other steps, and the work after
        each epoch (quantas, tests, checkpoints, progress hooks)."""
        end = time.perf_counter()
        first = self.first_batch or end
        second = self.second_batch or end
        for name, seconds in (("setup", first - self.began), ("first_step", second - first),
                              ("steps", end - second - self.epoch_end_s),
                              ("epoch_end", self.epoch_end_s)):
            timings[name] = timings.get(name, 0.0) + max(seconds, 0.0)


def fit(
    model: keras.Model,
    x: Inputs,
    y: np.ndarray,
    epochs: int,
    *,
    order_seed: int | None = None,
    resume: FitResult | None = None,
    on_epoch: EpochHook | None = None,
    should_cancel: CancelCheck | None = None,
    after_epoch: AfterEpoch | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
    shuffle: bool = False,
    test: Test | None = None,
    layer_indices: dict[str, int] | None = None,
) -> FitResult:
    """Trains `model` on one-hot labels `y` up to `epochs` epochs in all.

    `order_seed` fixes the batches' order with `shuffle` (`epoch_rows`); `resume` is what
    earlier epochs produced (from a checkpoint): training goes on from
    the epoch after them. With `test`, that model is evaluated on the test split after
    every epoch. `layer_indices` is the `keras_layer_index` each QUANTA layer is recorded
    under (default: its index in `model.layers`). Raises `Cancelled` if `should_cancel`
    said so (asked as `CANCEL_CHECK_S` says).
    """
    result = resume if resume is not None else FitResult()
    if layer_indices and not result.history:
        result.quantas.keras_layer_index.update(layer_indices)
    done = len(result.history)
    if done < epochs:
        hooks = _Hooks(result, on_epoch, should_cancel, after_epoch, test)
        model.fit(
            epoch_dataset(x, y, order_seed, done, epochs, shuffle),
            epochs=epochs,
            initial_epoch=done,
            # One iterator over every remaining epoch, cut into epochs of this many steps.
            steps_per_epoch=steps_per_epoch(len(y)),
            shuffle=False,  # the dataset has the order; Keras would only warn
            callbacks=[hooks, *(callbacks or [])],
            verbose=verbose,
        )
        hooks.record_timings(result.timings)
        if hooks.cancelled:
            raise Cancelled(
                f"training cancelled during epoch {len(result.history) + 1} of {epochs}"
            )
    return result


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    results = model.evaluate(x, y, batch_size=BATCH_SIZE, verbose=0, return_dict=True)
    return {name: float(value) for name, value in results.items()}


def tensorboard_callback(log_dir: str | Path) -> keras.callbacks.Callback:
    """Keras's TensorBoard writer for one trained model's run, epochs only: it records the
    `logs` every epoch ends with (`epoch_logs` included), no graph, no profile."""
    try:
        import tensorboard  # noqa: F401 - TensorFlow writes summaries through it
    except ImportError:
        raise QuantaError("--tensorboard needs the tensorboard package: pip install "
                          "'quanta-service[tensorboard]' (or pip install tensorboard)") from None
    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0,
                                       update_freq="epoch")
