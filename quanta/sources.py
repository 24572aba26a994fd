"""The frozen source: loaded once per weights file, scored once, its features cached.

A worker runs many jobs, and every run and every layer of a study transfers from the
same source: loading, evaluating and (in source inference mode) running it once per
process instead of once per run is most of what makes a study cheaper than its runs.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import numpy as np

from quanta import training
from quanta.datasets import Dataset
from quanta.errors import QuantaError
from quanta.models import build_model, freeze, source_trunk
from quanta.reference import load_source_weights
from quanta_spec import TransferSpec
from quanta_spec.lru import LRU
from quanta_spec.networks import DEFAULT_ARCHITECTURE
from quanta_spec.weights_file import (
    WeightsLayoutError,
    check_fits,
    read_shapes,
    resolve_architecture,
)

#: Frozen, compiled sources by (weights file, network shape).
SOURCES: LRU[Hashable, keras.Model] = LRU(size=4)
#: The sources' test metrics by (weights file, task, samples).
SOURCE_METRICS: LRU[Hashable, dict[str, float]] = LRU(size=64)
#: Precomputed source features (`source_inference_mode`), with the source they came from.
FEATURES: LRU[Hashable, tuple[keras.Model, tuple[np.ndarray, ...]]] = LRU(size=2)
#: Default memory budget for precomputed source features (`source_inference_mode`).
SOURCE_CACHE_BYTES = 2 * 1024**3


@contextmanager
def precision(policy: str) -> Iterator[None]:
    """Builds the models of a run under `policy` (`load_source` builds its source under
    the same policy)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def summary(model: keras.Model) -> str:
    lines = io.StringIO()
    model.summary(print_fn=lambda line, **_: lines.write(line + "\n"))
    return lines.getvalue()


def file_key(path: Path) -> tuple[str, int, int]:
    """Names a file's content as well as its path: a file rewritten in place is new."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def load_previous(path: str | Path) -> keras.Model:
    """A saved model to continue training, or a one-line reason it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise QuantaError(f"previous training '{path}' does not exist")
    try:
        return keras.saving.load_model(path, safe_mode=True)  # never runs code
    except Exception as exc:
        raise QuantaError(f"cannot load previous training '{path}': {exc}") from exc


def source_architecture(weights: str | Path, architecture: str | None,
                        width_multiplier: float, data: Dataset) -> str:
    """The network of a source weights file: `architecture`, or when None the one its
    shapes have; raises, naming expected and found shapes, if the file does not fit."""
    weights = Path(weights)
    if not weights.is_file():
        raise QuantaError(f"source weights '{weights}' do not exist")
    try:
        shapes = read_shapes(weights)
        chosen = resolve_architecture(shapes, architecture, width_multiplier)
        check_fits(shapes, chosen, width_multiplier, data.input_shape, data.nb_classes)
    except WeightsLayoutError as exc:
        raise QuantaError(f"source weights '{weights}' {exc}" if str(exc).startswith("do not")
                          else f"source weights '{weights}': {exc}") from None
    return chosen


def load_source(
    weights: str | Path, data: Dataset, width_multiplier: float = 1.0,
    architecture: str | None = DEFAULT_ARCHITECTURE, policy: str = "float32",
) -> keras.Model:
    """The frozen, compiled source: the shared network with the weights of `weights`, in
    the reference's layout or this project's earlier one (`architecture` None: the
    network the file's shapes have), computing under the dtype `policy` of the runs
    (its weights stay float32): under a mixed policy the frozen source's forward pass is
    a fifth of a layer-6 step, and in float32 it cost bfloat16 a sixth of its gain.

    Loaded once per weights file (and network shape, and policy) in a process: every run
    and every layer of a study shares the same frozen model.
    """
    architecture = source_architecture(weights, architecture, width_multiplier, data)
    weights = Path(weights)
    key = (file_key(weights), data.input_shape, data.nb_classes, width_multiplier,
           architecture, policy)
    return SOURCES.get(key, lambda: _load_source(weights, data, width_multiplier,
                                                 architecture, policy))


def _load_source(weights: Path, data: Dataset, width_multiplier: float,
                 architecture: str, policy: str) -> keras.Model:
    with precision(policy):
        model = build_model(data.input_shape, data.nb_classes,
                            width_multiplier=width_multiplier, architecture=architecture,
                            name="source")
    load_source_weights(model, weights)
    freeze(model)
    return training.compile_model(model)


def source_test_metrics(spec: TransferSpec, source: keras.Model, data: Dataset,
                        data_dir: str | Path | None) -> dict[str, float]:
    """The frozen source's test metrics, computed once per (weights, task, samples); none
    ({}) for a user's network whose head does not match the source task's classes (an
    ImageNet network measured without ImageNet)."""
    if int(source.output_shape[-1]) != data.nb_classes:
        return {}
    task_key: Hashable = spec.source_task
    if spec.source_task.startswith(("npz:", "images:")):
        task_key = file_key(Path(spec.source_task.split(":", 1)[1]))
    network = spec.source_weights or spec.source_model
    network_key = network if network.startswith("keras.") else file_key(Path(network))
    key = (network_key, spec.width_multiplier, spec.architecture, task_key,
           str(data_dir), spec.nb_of_target_samples, spec.preprocess, spec.resize_method,
           spec.precision)
    return dict(SOURCE_METRICS.get(key, lambda: training.evaluate(
        source, data.x_test, training.one_hot(data.y_test, data.nb_classes))))


def source_features(
    layers: tuple[int, ...], source: keras.Model, x: np.ndarray, budget: int
) -> tuple[np.ndarray, ...] | None:
    """The frozen source's pre-activations at the transferred `layers` for every training
    sample, in inference mode; None if they do not fit in `budget` bytes."""
    trunk = source_trunk(source, layers, inference=True)
    per_sample = sum(int(np.prod(out.shape[1:])) * 4 for out in trunk.outputs)
    if per_sample * len(x) > budget:
        return None

    def compute() -> tuple[keras.Model, tuple[np.ndarray, ...]]:
        # The training batch size: oneDNN's results depend slightly on it.
        out: Any = trunk.predict(x, batch_size=training.BATCH_SIZE, verbose=0)
        # The source is kept with its features so that its id cannot be reused meanwhile.
        return source, tuple(out) if isinstance(out, list | tuple) else (out,)

    key = (id(source), layers, x.__array_interface__["data"][0], x.shape)
    return FEATURES.get(key, compute)[1]
