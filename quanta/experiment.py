"""Whole experiments: training a source, and QUANTA transfers over several runs.

These are the functions the command line and the service's workers call. They take
a spec from `quanta_spec`, write the seed's files under `output_dir`, and report
progress through `on_epoch` and stop early when `should_cancel` says so.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from quanta import export, training
from quanta.checkpoint import RunCheckpoint
from quanta.checkpoint import clear as clear_checkpoints
from quanta.datasets import Dataset, load_dataset
from quanta.errors import Cancelled, QuantaError
from quanta.layer import QuantaLayer, quanta_layers
from quanta.models import (
    build_model,
    freeze,
    source_trunk,
    with_source_inputs,
    with_source_trunk,
)
from quanta.traced_models import Compiled, TracedModels
from quanta_spec import SourceSpec, TransferSpec

__all__ = [
    "Cancelled",
    "EpochEvent",
    "RunResult",
    "SourceResult",
    "TransferResult",
    "run_transfer",
    "train_source",
]


class Timings(dict):
    """Seconds spent per phase (data, source, build, train, evaluate, export), summed.

    Kept with every result so that benchmarks and job results can say where time went.
    """

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


@dataclass
class EpochEvent:
    """Progress after one epoch; `epoch` counts finished epochs (1-based)."""

    run: int
    nb_of_runs: int
    epoch: int
    nb_of_epochs: int
    metrics: dict[str, float]
    quantas: dict[str, dict[str, float]] = field(default_factory=dict)


ProgressHook = Callable[[EpochEvent], None]


@dataclass
class RunResult:
    run: int
    target_metrics: dict[str, float]
    source_metrics: dict[str, float]
    #: Final quantas by transferred layer number: `{"0": {"source": λ_s, "target": λ_t}}`.
    quantas: dict[str, dict[str, float]]
    files: list[Path]
    #: Test metrics of the witness (trained from scratch), with the `witness` option.
    witness_metrics: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": [str(f) for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{**data, "files": [Path(f) for f in data["files"]]})

    @property
    def transfer_gain(self) -> float | None:
        """Target test accuracy minus witness test accuracy."""
        if self.witness_metrics is None:
            return None
        return (
            self.target_metrics["categorical_accuracy"]
            - self.witness_metrics["categorical_accuracy"]
        )


@dataclass
class TransferResult:
    experiment_dir: Path
    runs: list[RunResult] = field(default_factory=list)
    #: Model summaries (`show_only_build`), by model name.
    summaries: dict[str, str] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)


@dataclass
class SourceResult:
    training_dir: Path
    test_metrics: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    summary: str = ""
    timings: Timings = field(default_factory=Timings)


@contextmanager
def precision(policy: str) -> Iterator[None]:
    """Builds the models of a run under `policy` (the source stays in float32)."""
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


def _seed_for_run(seed: int | None, run: int) -> int | None:
    # Each run gets its own seed so any run can be reproduced (or resumed) on its own.
    return seed + run if seed is not None and seed >= 0 else None


def _load_previous(path: str | Path) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise QuantaError(f"previous training '{path}' does not exist")
    try:
        return keras.saving.load_model(path)
    except Exception as exc:
        raise QuantaError(f"cannot load previous training '{path}': {exc}") from exc


class _Cache:
    """A few recent results kept for the life of the process (a worker runs many jobs)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = make()
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_SOURCES = _Cache(size=4)
#: Default memory budget for precomputed source features (`source_inference_mode`).
SOURCE_CACHE_BYTES = 2 * 1024**3
_SOURCE_METRICS = _Cache(size=64)
#: Targets and witnesses, traced once per shape (see `quanta.traced_models`).
TRACED_MODELS = TracedModels()


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def load_source(
    weights: str | Path, data: Dataset, width_multiplier: float = 1.0
) -> keras.Model:
    """The frozen, compiled source: the shared network with the weights of `weights`.

    Loaded once per weights file (and network shape) in a process: every run and every
    layer of a study shares the same frozen model.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise QuantaError(f"source weights '{weights}' do not exist")
    key = (_file_key(weights), data.input_shape, data.nb_classes, width_multiplier)
    return _SOURCES.get(key, lambda: _load_source(weights, data, width_multiplier))


def _load_source(weights: Path, data: Dataset, width_multiplier: float) -> keras.Model:
    model = build_model(
        data.input_shape, data.nb_classes, width_multiplier=width_multiplier, name="source"
    )
    try:
        model.load_weights(weights)
    except Exception as exc:
        raise QuantaError(
            f"source weights '{weights}' do not fit a source network for images of shape "
            f"{data.input_shape} with {data.nb_classes} classes and width multiplier "
            f"{width_multiplier}: {exc}"
        ) from exc
    freeze(model)
    return training.compile_model(model)


def source_test_metrics(spec: TransferSpec, source: keras.Model, data: Dataset,
                        data_dir: str | Path | None) -> dict[str, float]:
    """The frozen source's test metrics, computed once per (weights, task, samples)."""
    task_key: Hashable = spec.source_task
    if spec.source_task.startswith("npz:"):
        task_key = _file_key(Path(spec.source_task[4:]))
    key = (_file_key(Path(spec.source_weights)), spec.width_multiplier, task_key,
           str(data_dir), spec.nb_of_target_samples)
    return dict(_SOURCE_METRICS.get(key, lambda: training.evaluate(
        source, data.x_test, training.one_hot(data.y_test, data.nb_classes))))


def _check_previous_target(model: keras.Model, spec: TransferSpec, data: Dataset) -> None:
    found = tuple(layer.transferred_layer for layer in quanta_layers(model))
    if found != spec.transferred_layers:
        raise QuantaError(
            f"previous training has QUANTA layers at {list(found)}, but layer_to_transfer "
            f"{spec.layer_to_transfer} asks for {list(spec.transferred_layers)}"
        )
    shape, classes = tuple(model.input_shape[1:]), model.output_shape[-1]
    if shape != data.input_shape or classes != data.nb_classes:
        raise QuantaError(
            f"previous training takes images {shape} with {classes} classes; the target task "
            f"has images {data.input_shape} with {data.nb_classes} classes"
        )


def run_transfer(
    spec: TransferSpec,
    output_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    on_epoch: ProgressHook | None = None,
    should_cancel: Callable[[], bool] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_interval_s: float = 0.0,
    source_cache_bytes: int = SOURCE_CACHE_BYTES,
) -> TransferResult:
    """Runs `spec.nb_of_runs` QUANTA transfers and writes the seed's files for each.

    With `spec.source_inference_mode`, the frozen source's activations for the training
    samples are computed once (if they fit in `source_cache_bytes`) and reused.

    With `checkpoint_dir`, every run is saved after each epoch there (or, with
    `checkpoint_interval_s`, after an epoch that ends at least that long after the last
    save), and a call that finds checkpoints (an earlier attempt that died) resumes from
    them: finished runs are not redone, an interrupted run goes on from its last saved
    epoch. The folder is removed once every run is exported.
    """
    for name in ("source_weights", "train_from_previous_training"):
        if not isinstance(getattr(spec, name), str | None):
            raise QuantaError(f"{name} must be a local path here, not a reference")
    result = TransferResult(
        experiment_dir=export.experiment_dir(output_dir, spec.source_task, spec.target_task)
    )
    clock = result.timings
    with clock.phase("data"):
        target_data = load_dataset(spec.target_task, data_dir).take(spec.nb_of_target_samples)
        source_data = load_dataset(spec.source_task, data_dir).take(spec.nb_of_target_samples)
    training.set_determinism(spec.seed)
    with clock.phase("source"):
        source = load_source(spec.source_weights, source_data, spec.width_multiplier)
    target_y_train = training.one_hot(target_data.y_train, target_data.nb_classes)
    target_y_test = training.one_hot(target_data.y_test, target_data.nb_classes)
    features = None
    if spec.source_inference_mode and not spec.show_only_build:
        with clock.phase("source"):
            features = _source_features(spec, source, target_data.x_train, source_cache_bytes)

    for run in range(spec.nb_of_runs):
        ckpt = (RunCheckpoint(Path(checkpoint_dir) / f"run_{run}", checkpoint_interval_s)
                if checkpoint_dir else None)
        if ckpt is not None and (done := ckpt.exported()) is not None:
            result.runs.append(RunResult.from_dict(done))  # finished by an earlier attempt
            continue
        seed = _seed_for_run(spec.seed, run)
        training.set_determinism(seed)
        training.reseed(source, seed)
        with clock.phase("build"), precision(spec.precision):
            target = _target_for_run(spec, ckpt, source, target_data, features is not None)
        if spec.show_only_build:
            result.summaries = {"source": summary(source), "target": summary(target.model)}
            return result

        def hook(epoch: int, metrics: dict, quantas: dict, run: int = run) -> None:
            if on_epoch is not None:
                on_epoch(
                    EpochEvent(
                        run, spec.nb_of_runs, epoch + 1, spec.nb_of_target_epochs, metrics, quantas
                    )
                )

        with clock.phase("train"):
            fitted = training.fit(
                target.trainer,
                target_data.x_train if features is None else (target_data.x_train, *features),
                target_y_train,
                spec.nb_of_target_epochs,
                seed=seed,
                resume=target.so_far,
                on_epoch=hook,
                should_cancel=should_cancel,
                after_epoch=ckpt.save_epoch if ckpt is not None else None,
                callbacks=callbacks,
            )
        with clock.phase("evaluate"):
            outcome = _RunOutcome(
                fitted=fitted,
                target_metrics=training.evaluate(target.model, target_data.x_test,
                                                 target_y_test),
                source_metrics=source_test_metrics(spec, source, source_data, data_dir),
            )
        if spec.witness:
            with clock.phase("witness"):
                outcome.witness = _train_witness(spec, seed, target_data, should_cancel,
                                                 callbacks)
        with clock.phase("export"):
            if ckpt is not None:
                ckpt.rollback_export()  # an earlier attempt may have died while exporting
                ckpt.begin_export(_jsonl_files(result.experiment_dir, spec, run))
            run_result = _export_run(result.experiment_dir, spec, run, source, target.model,
                                     outcome)
            if ckpt is not None:
                ckpt.finish_export(run_result.as_dict())
        result.runs.append(run_result)
    if checkpoint_dir is not None:
        clear_checkpoints(checkpoint_dir)
    return result


@dataclass
class _Target:
    """The model exported (`model`) and the one trained (`trainer`): the same model, or,
    with precomputed source features, a copy that takes them as inputs and shares every
    layer with `model`."""

    model: keras.Model
    trainer: keras.Model
    so_far: training.FitResult | None = None


def _target_for_run(
    spec: TransferSpec, ckpt: RunCheckpoint | None, source: keras.Model, data: Dataset,
    precomputed: bool,
) -> _Target:
    """The target to train: resumed from a checkpoint, a previous training, or new."""
    resumed = ckpt.resume() if ckpt is not None else None
    if resumed is not None:
        trainer, so_far = resumed
        if not precomputed:
            return _Target(trainer, trainer, so_far)
        model = training.compile_model(with_source_trunk(trainer, source))
        model.optimizer = trainer.optimizer
        return _Target(model, trainer, so_far)
    if spec.train_from_previous_training:
        model = _load_previous(spec.train_from_previous_training)
        _check_previous_target(model, spec, data)
        compiled = _trainer_for(model, precomputed)
        return _Target(compiled.model, compiled.trainer)

    def build() -> Compiled:
        return _trainer_for(training.compile_model(build_model(
            data.input_shape,
            data.nb_classes,
            source=source,
            transfer_layers=spec.transferred_layers,
            augment=spec.augment_data,
            width_multiplier=spec.width_multiplier,
            gradient_multiplier=spec.quanta_gradient_multiplier,
            source_inference=spec.source_inference_mode,
            name="target",
        )), precomputed)

    # Everything that shapes the graph; the source itself, since the target calls its layers.
    key = ("target", source, data.input_shape, data.nb_classes, spec.transferred_layers,
           spec.augment_data, spec.width_multiplier, spec.quanta_gradient_multiplier,
           spec.source_inference_mode, spec.precision, precomputed)
    compiled = TRACED_MODELS.get(key, build)
    return _Target(compiled.model, compiled.trainer)


def _trainer_for(model: keras.Model, precomputed: bool) -> Compiled:
    if not precomputed:
        return Compiled(model, model)
    trainer = training.compile_model(with_source_inputs(model))
    model.optimizer = trainer.optimizer  # saved with the target: training can continue
    return Compiled(model, trainer)


_FEATURES = _Cache(size=2)


def _source_features(
    spec: TransferSpec, source: keras.Model, x: np.ndarray, budget: int
) -> tuple[np.ndarray, ...] | None:
    """The frozen source's pre-activations at the transferred layers for every training
    sample, in inference mode; None if they do not fit in `budget` bytes."""
    trunk = source_trunk(source, spec.transferred_layers, inference=True)
    per_sample = sum(int(np.prod(out.shape[1:])) * 4 for out in trunk.outputs)
    if per_sample * len(x) > budget:
        return None

    def compute() -> tuple[keras.Model, tuple[np.ndarray, ...]]:
        # The training batch size: oneDNN's results depend slightly on it.
        out = trunk.predict(x, batch_size=training.BATCH_SIZE, verbose=0)
        # The source is kept with its features so that its id cannot be reused meanwhile.
        return source, tuple(out) if isinstance(out, list | tuple) else (out,)

    key = (id(source), spec.transferred_layers, x.__array_interface__["data"][0], x.shape)
    return _FEATURES.get(key, compute)[1]


@dataclass
class _RunOutcome:
    fitted: training.FitResult
    target_metrics: dict[str, float]
    source_metrics: dict[str, float]
    witness: tuple[training.FitResult, dict[str, float]] | None = None


def _train_witness(
    spec: TransferSpec,
    seed: int | None,
    data: Dataset,
    should_cancel: Callable[[], bool] | None,
    callbacks: list[keras.callbacks.Callback] | None,
) -> tuple[training.FitResult, dict[str, float]]:
    """The baseline without transfer: same architecture, data, seed and epochs."""
    training.set_determinism(seed)

    def build() -> Compiled:
        witness = training.compile_model(
            build_model(data.input_shape, data.nb_classes, augment=spec.augment_data,
                        width_multiplier=spec.width_multiplier, name="witness")
        )
        return Compiled(witness, witness)

    key = ("witness", data.input_shape, data.nb_classes, spec.augment_data,
           spec.width_multiplier, spec.precision)
    with precision(spec.precision):
        witness = TRACED_MODELS.get(key, build).model
    fitted = training.fit(
        witness, data.x_train, training.one_hot(data.y_train, data.nb_classes),
        spec.nb_of_target_epochs, seed=seed, should_cancel=should_cancel, callbacks=callbacks,
    )
    metrics = training.evaluate(
        witness, data.x_test, training.one_hot(data.y_test, data.nb_classes)
    )
    return fitted, metrics


def _jsonl_files(folder: Path, spec: TransferSpec, run: int) -> list[Path]:
    names = export.run_file_names(run, spec.layer_label)
    return [folder / name for key, name in names.items()
            if name.endswith(".jsonl") and (spec.witness or not key.startswith("witness"))]


def _export_run(
    folder: Path,
    spec: TransferSpec,
    run: int,
    source: keras.Model,
    target: keras.Model,
    outcome: _RunOutcome,
) -> RunResult:
    names = export.run_file_names(run, spec.layer_label)
    fitted = outcome.fitted
    files = [
        export.save_model(target, folder / names["target_model"]),
        export.save_model(source, folder / names["source_model"]),
        export.append_jsonl(
            folder / names["target_training"], export.training_record(fitted.history)
        ),
        export.append_jsonl(folder / names["target_testing"], outcome.target_metrics),
        export.append_jsonl(folder / names["source_testing"], outcome.source_metrics),
        export.append_jsonl(folder / names["quantas"], export.quantas_record(fitted.quantas)),
    ]
    witness_metrics = None
    if outcome.witness is not None:
        witness_fitted, witness_metrics = outcome.witness
        files += [
            export.append_jsonl(folder / names["witness_training"],
                                export.training_record(witness_fitted.history)),
            export.append_jsonl(folder / names["witness_testing"], witness_metrics),
        ]
    return RunResult(
        run=run,
        target_metrics=outcome.target_metrics,
        source_metrics=outcome.source_metrics,
        quantas=training.current_quantas(target),
        files=files,
        witness_metrics=witness_metrics,
    )


def train_source(
    spec: SourceSpec,
    output_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    on_epoch: ProgressHook | None = None,
    should_cancel: Callable[[], bool] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_interval_s: float = 0.0,
) -> SourceResult:
    """Trains a source model and writes `{output_dir}/{source_task}_training/`.

    `checkpoint_dir` works as for `run_transfer`.
    """
    if not isinstance(spec.train_from_previous_training, str | None):
        raise QuantaError("train_from_previous_training must be a local path here")
    result = SourceResult(training_dir=export.source_training_dir(output_dir, spec.source_task))
    clock = result.timings
    with clock.phase("data"):
        data = load_dataset(spec.source_task, data_dir).take(spec.nb_of_samples)
    folder = result.training_dir
    names = export.SOURCE_FILE_NAMES
    ckpt = (RunCheckpoint(Path(checkpoint_dir) / "source", checkpoint_interval_s)
            if checkpoint_dir else None)
    if ckpt is not None and (done := ckpt.exported()) is not None:
        clear_checkpoints(checkpoint_dir)
        return SourceResult(training_dir=folder, test_metrics=done["test_metrics"],
                            files=[Path(f) for f in done["files"]], summary=done["summary"])
    training.set_determinism(spec.seed)
    resumed = ckpt.resume() if ckpt is not None else None
    so_far = None
    if resumed is not None:
        model, so_far = resumed
    elif spec.train_from_previous_training:
        model = _load_previous(spec.train_from_previous_training)
        if any(isinstance(layer, QuantaLayer) for layer in model.layers):
            raise QuantaError("previous training is a QUANTA target, not a source model")
    else:
        with precision(spec.precision):
            model = training.compile_model(
                build_model(
                    data.input_shape,
                    data.nb_classes,
                    augment=spec.augment_data,
                    width_multiplier=spec.width_multiplier,
                    name="source",
                )
            )
    result.summary = summary(model)
    if spec.show_only_build:
        return result

    def hook(epoch: int, metrics: dict, quantas: dict) -> None:
        if on_epoch is not None:
            on_epoch(EpochEvent(0, 1, epoch + 1, spec.nb_of_epochs, metrics))

    y_train = training.one_hot(data.y_train, data.nb_classes)
    seed = spec.seed if spec.seeded else None
    with clock.phase("train"):
        fitted = training.fit(
            model, data.x_train, y_train, spec.nb_of_epochs, seed=seed, resume=so_far,
            on_epoch=hook, should_cancel=should_cancel, callbacks=callbacks,
            after_epoch=ckpt.save_epoch if ckpt is not None else None,
        )
    with clock.phase("evaluate"):
        result.test_metrics = training.evaluate(
            model, data.x_test, training.one_hot(data.y_test, data.nb_classes)
        )
    jsonl = [folder / names["training"], folder / names["testing"]]
    with clock.phase("export"):
        if ckpt is not None:
            ckpt.rollback_export()
            ckpt.begin_export(jsonl)
        result.files = [
            export.save_model(model, folder / names["model"]),
            export.save_weights(model, folder / names["weights"]),
            export.append_jsonl(jsonl[0], export.training_record(fitted.history)),
            export.append_jsonl(jsonl[1], result.test_metrics),
        ]
    if ckpt is not None:
        ckpt.finish_export({"test_metrics": result.test_metrics, "summary": result.summary,
                            "files": [str(f) for f in result.files]})
        clear_checkpoints(checkpoint_dir)
    return result
