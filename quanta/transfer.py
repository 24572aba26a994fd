"""The transfer loop: `nb_of_runs` QUANTA transfers of one layer (or all at once).

Each run builds (or resumes) its target, trains it, evaluates it and the frozen source,
optionally trains a witness, and writes the seed's files for the run. Checkpoints make a
run resumable; compiled models are reused between runs of the same shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from quanta import export, training
from quanta.any_network import OwnSource, build_target, own_source
from quanta.checkpoint import RunCheckpoint
from quanta.checkpoint import clear as clear_checkpoints
from quanta.datasets import Dataset, load_dataset
from quanta.errors import QuantaError
from quanta.layer import quanta_layers
from quanta.models import build_model, with_source_inputs, with_source_trunk
from quanta.reference import load_target, reference_layer_indices
from quanta.results import EpochEvent, ProgressHook, RunResult, TransferResult
from quanta.sources import (
    SOURCE_CACHE_BYTES,
    load_source,
    precision,
    source_architecture,
    source_features,
    source_test_metrics,
    summary,
)
from quanta.traced_models import Compiled, TracedModels
from quanta_spec import TransferSpec, run_seed
from quanta_spec.file_names import NETWORK_FILE
from quanta_spec.streams import Stream, stream_seed

#: Targets and witnesses, traced once per shape (see `quanta.traced_models`).
TRACED_MODELS = TracedModels()


def _check_previous_target(model: keras.Model, spec: TransferSpec, data: Dataset,
                           layers: tuple[int | str, ...]) -> None:
    found = tuple(layer.transferred_layer for layer in quanta_layers(model))
    if found != layers:
        raise QuantaError(
            f"previous training has QUANTA layers at {list(found)}, but layer_to_transfer "
            f"{spec.layer_to_transfer} asks for {list(layers)}"
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

    `callbacks` are Keras callbacks given to every target's (and witness's) training: at
    each epoch's end their `logs` hold the training metrics, `lambda_s_K` for each
    transferred layer K and, with `test_every_epoch`, `test_` and each test metric
    (`quanta.training.epoch_logs`), so a CSV, TensorBoard or W&B logger records λ_s as
    it records the loss. `on_epoch` gets an `EpochEvent` (run, epoch, metrics, quantas)
    after each epoch, for code that is not a callback.
    """
    for name in ("source_weights", "source_model", "train_from_previous_training"):
        if not isinstance(getattr(spec, name), str | None):
            raise QuantaError(f"{name} must be a local path here, not a reference")
    result = TransferResult(
        experiment_dir=export.experiment_dir(output_dir, spec.source_task, spec.target_task)
    )
    clock = result.timings
    # Loading builds the source's layers (their seeds drawn as Keras draws them); its
    # masks are restarted from each run's own stream below.
    training.set_determinism(spec.seed, Stream.SOURCE_DROPOUT)
    own: OwnSource | None = None
    if spec.own_network:
        with clock.phase("source"):
            own = own_source(spec.source_model, spec.preprocess, spec.resize_method)
            layers = own.layers(spec.layer_to_transfer)
            spec = spec.model_copy(update={"preprocess": own.preprocess})
        with clock.phase("data"):
            target_data = own.prepare(_load(spec.target_task, data_dir, spec, own))
            source_data = own.prepare(_load(spec.source_task, data_dir, spec, own))
        source = own.model
        export.write_json(result.experiment_dir / NETWORK_FILE, own.describe(layers))
    else:
        with clock.phase("data"):
            target_data = _load(spec.target_task, data_dir, spec)
            source_data = _load(spec.source_task, data_dir, spec)
        with clock.phase("source"):
            # The network the weights file has, when the spec leaves it open; from here
            # on every model of the experiment is built with it.
            spec = spec.model_copy(update={"architecture": source_architecture(
                spec.source_weights, spec.architecture, spec.width_multiplier, source_data)})
            source = load_source(spec.source_weights, source_data, spec.width_multiplier,
                                 spec.architecture, spec.precision)
        layers = spec.transferred_layers
    target_y_train = training.one_hot(target_data.y_train, target_data.nb_classes)
    target_y_test = training.one_hot(target_data.y_test, target_data.nb_classes)
    features = None
    if spec.source_inference_mode and not spec.show_only_build and own is None:
        with clock.phase("source"):
            features = source_features(layers, source,
                                       target_data.x_train, source_cache_bytes)

    for run in range(spec.nb_of_runs):
        ckpt = (RunCheckpoint(Path(checkpoint_dir) / f"run_{run}", checkpoint_interval_s)
                if checkpoint_dir else None)
        if ckpt is not None and (done := ckpt.exported()) is not None:
            result.runs.append(RunResult.from_dict(done))  # finished by an earlier attempt
            continue
        seed = run_seed(spec.seed, run)
        training.reseed(source, seed, Stream.SOURCE_DROPOUT)
        with clock.phase("build"), precision(spec.precision):
            target = _target_for_run(spec, ckpt, source, target_data, features is not None,
                                     seed, own, layers)
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

        run_callbacks = _with_tensorboard(callbacks, spec, result.experiment_dir,
                                          f"target_r_{run}_l_{spec.layer_label}")
        with clock.phase("train"):
            fitted = training.fit(
                target.trainer,
                target_data.x_train if features is None else (target_data.x_train, *features),
                target_y_train,
                spec.nb_of_target_epochs,
                order_seed=_order_seed(seed),
                resume=target.so_far,
                on_epoch=hook,
                should_cancel=should_cancel,
                after_epoch=ckpt.save_epoch if ckpt is not None else None,
                callbacks=run_callbacks,
                shuffle=spec.shuffle,
                test=((None if target.model is target.trainer else target.model,
                       target_data.x_test, target_y_test) if spec.test_every_epoch else None),
                layer_indices=None if own else _reference_indices(target.model),
            )
        result.train_timings.add(fitted.timings)
        with clock.phase("evaluate"):
            outcome = _RunOutcome(
                fitted=fitted,
                target_metrics=training.evaluate(target.model, target_data.x_test,
                                                 target_y_test),
                source_metrics=source_test_metrics(spec, source, source_data, data_dir),
            )
        if spec.witness:
            with clock.phase("witness"):
                outcome.witness = _train_witness(
                    spec, seed, target_data, should_cancel, own,
                    _with_tensorboard(callbacks, spec, result.experiment_dir,
                                      f"witness_r_{run}_l_{spec.layer_label}"))
        with clock.phase("export"):
            if ckpt is not None:
                ckpt.rollback_export()  # an earlier attempt may have died while exporting
                ckpt.begin_export(_jsonl_files(result.experiment_dir, spec, run))
            run_result = _export_run(result.experiment_dir, spec, run, SAVED_SOURCE.save(source),
                                     target.model, outcome)
            if ckpt is not None:
                ckpt.finish_export(run_result.as_dict())
        result.runs.append(run_result)
    if checkpoint_dir is not None:
        clear_checkpoints(checkpoint_dir)
    return result


class _SavedSource:
    """The frozen source is the same model in every run, and in every job of a worker
    that reuses it: saved once, and the other runs' files are that file (see
    `export.same_file`), as long as that file is still there as it was written (the
    same inode, size and modification time: files are replaced, never rewritten, so a
    file removed, moved or replaced since is saved again). Its random generators' states,
    which runs reseed, are not part of a `.keras` file."""

    def __init__(self) -> None:
        self.model: weakref.ref[keras.Model] | None = None
        self.path: Path | None = None
        self.stamp: tuple[int, int, int] | None = None

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def save(self, source: keras.Model) -> Callable[[Path], Path]:
        def write(path: Path) -> Path:
            earlier = self.model() if self.model is not None else None
            if (earlier is source and self.path is not None and self.stamp is not None
                    and self._stamp(self.path) == self.stamp):
                return export.same_file(self.path, path)
            export.save_model(source, path)
            self.model, self.path = weakref.ref(source), path
            self.stamp = self._stamp(path)
            return path

        return write


#: One per process: a worker's next job with the same source links its file too.
SAVED_SOURCE = _SavedSource()


@dataclass
class _Target:
    """The model exported (`model`) and the one trained (`trainer`): the same model, or,
    with precomputed source features, a copy that takes them as inputs and shares every
    layer with `model`."""

    model: keras.Model
    trainer: keras.Model
    so_far: training.FitResult | None = None


def _order_seed(seed: int | None) -> int | None:
    """The seed of a run's batch order (target and witness see the same batches)."""
    return None if seed is None else stream_seed(seed, Stream.DATA_ORDER)


def _load(task: str, data_dir: str | Path | None, spec: TransferSpec,
          own: OwnSource | None = None) -> Dataset:
    """A task's first `nb_of_target_samples`; an image zip at the user network's input."""
    shape = own.input_shape if own is not None else None
    return load_dataset(task, data_dir, image_shape=shape, resize_method=spec.resize_method
                        ).take(spec.nb_of_target_samples)


def _target_for_run(
    spec: TransferSpec, ckpt: RunCheckpoint | None, source: keras.Model, data: Dataset,
    precomputed: bool, seed: int | None, own: OwnSource | None = None,
    layers: tuple[int | str, ...] = (),
) -> _Target:
    """The target to train: resumed from a checkpoint (its random states as saved), a
    previous training, or new (its weights from the run's target stream); a target that
    is not resumed gets its masks from the run's target-Dropout stream."""
    resumed = ckpt.resume() if ckpt is not None else None
    if resumed is not None:
        trainer, so_far = resumed
        if not precomputed:
            return _Target(trainer, trainer, so_far)
        model = training.compile_model(with_source_trunk(trainer, source))
        model.optimizer = trainer.optimizer
        return _Target(model, trainer, so_far)
    training.set_determinism(seed, Stream.TARGET_INIT)
    target = _new_or_previous_target(spec, source, data, precomputed, own, layers)
    training.reseed(target.model, seed, Stream.TARGET_DROPOUT, exclude=source)
    return target


def _new_or_previous_target(spec: TransferSpec, source: keras.Model, data: Dataset,
                            precomputed: bool, own: OwnSource | None = None,
                            layers: tuple[int | str, ...] = ()) -> _Target:
    if spec.train_from_previous_training:
        model = load_target(spec.train_from_previous_training)
        _check_previous_target(model, spec, data, layers or spec.transferred_layers)
        if precomputed and not _is_nested(model):
            raise QuantaError("source_inference_mode cannot continue a target saved by the "
                              "reference (its source layers are part of the target)")
        if model.optimizer is None:
            model = training.compile_model(model, spec.quanta_learning_rate_multiplier)
        compiled = _trainer_for(model, precomputed, spec.quanta_learning_rate_multiplier)
        return _Target(compiled.model, compiled.trainer)

    def build() -> Compiled:
        if own is not None:
            return Compiled(*[training.compile_model(build_target(
                own.model, own.graph, data.nb_classes, layers,
                init_from_source=spec.init_from_source, augment=spec.augment_data,
                source_inference=spec.source_inference_mode,
            ), spec.quanta_learning_rate_multiplier)] * 2)
        return _trainer_for(training.compile_model(build_model(
            data.input_shape,
            data.nb_classes,
            source=source,
            transfer_layers=spec.transferred_layers,
            augment=spec.augment_data,
            width_multiplier=spec.width_multiplier,
            architecture=spec.architecture,
            source_inference=spec.source_inference_mode,
            name="target",
        ), spec.quanta_learning_rate_multiplier), precomputed,
            spec.quanta_learning_rate_multiplier)

    # Everything that shapes the graph; the source itself, since the target calls its layers.
    key = ("target", source, data.input_shape, data.nb_classes, layers,
           spec.augment_data, spec.width_multiplier, spec.architecture,
           spec.quanta_learning_rate_multiplier, spec.source_inference_mode, spec.precision,
           precomputed, spec.init_from_source)
    compiled = TRACED_MODELS.get(key, build)
    return _Target(compiled.model, compiled.trainer)


def _is_nested(model: keras.Model) -> bool:
    """This project's target (the source nested in it), not a flat one the reference saved."""
    return any(layer.name == "source_trunk" for layer in model.layers)


def _reference_indices(model: keras.Model) -> dict[str, int] | None:
    """The reference's `keras_layer_index` of each QUANTA layer of this project's target.
    None for a flat target the reference saved: its own indices are the reference's."""
    if not _is_nested(model):
        return None
    layers = [q.transferred_layer for q in quanta_layers(model)]
    augment = any(layer.name == "augmentation" for layer in model.layers)
    return {str(k): i for k, i in reference_layer_indices(layers, augment).items()}


def _trainer_for(model: keras.Model, precomputed: bool, multiplier: float = 1.0) -> Compiled:
    if not precomputed:
        return Compiled(model, model)
    trainer = training.compile_model(with_source_inputs(model), multiplier)
    model.optimizer = trainer.optimizer  # saved with the target: training can continue
    return Compiled(model, trainer)


@dataclass
class _RunOutcome:
    fitted: training.FitResult
    target_metrics: dict[str, float]
    source_metrics: dict[str, float]
    witness: tuple[training.FitResult, dict[str, float]] | None = None


def _with_tensorboard(callbacks: list[keras.callbacks.Callback] | None, spec: TransferSpec,
                      folder: Path, run_name: str) -> list[keras.callbacks.Callback] | None:
    """`callbacks`, and with `spec.tensorboard` a TensorBoard writer for `run_name` under
    `folder/tensorboard/` (after the user's: it records what they may add to the logs)."""
    if not spec.tensorboard:
        return callbacks
    return [*(callbacks or []),
            training.tensorboard_callback(Path(folder) / "tensorboard" / run_name)]


def _train_witness(
    spec: TransferSpec,
    seed: int | None,
    data: Dataset,
    should_cancel: Callable[[], bool] | None,
    own: OwnSource | None,
    callbacks: list[keras.callbacks.Callback] | None,
) -> tuple[training.FitResult, dict[str, float]]:
    """The baseline without transfer: the target's network from scratch on the same data
    and batches, for as many epochs; its weights and masks from the run's witness streams,
    so it never starts as the target does."""
    training.set_determinism(seed, Stream.WITNESS_INIT)

    def build() -> Compiled:
        if own is not None:
            network = build_target(own.model, own.graph, data.nb_classes,
                                   init_from_source=spec.init_from_source,
                                   augment=spec.augment_data, name="witness")
        else:
            network = build_model(data.input_shape, data.nb_classes,
                                  augment=spec.augment_data,
                                  width_multiplier=spec.width_multiplier,
                                  architecture=spec.architecture, name="witness")
        witness = training.compile_model(network)
        return Compiled(witness, witness)

    key = ("witness", own.model if own is not None else None, data.input_shape,
           data.nb_classes, spec.augment_data, spec.width_multiplier, spec.architecture,
           spec.precision, spec.init_from_source)
    with precision(spec.precision):
        witness = TRACED_MODELS.get(key, build).model
    training.reseed(witness, seed, Stream.WITNESS_DROPOUT)
    fitted = training.fit(
        witness, data.x_train, training.one_hot(data.y_train, data.nb_classes),
        spec.nb_of_target_epochs, order_seed=_order_seed(seed), should_cancel=should_cancel,
        callbacks=callbacks, shuffle=spec.shuffle,
    )
    metrics = training.evaluate(
        witness, data.x_test, training.one_hot(data.y_test, data.nb_classes)
    )
    return fitted, metrics


def _jsonl_files(folder: Path, spec: TransferSpec, run: int) -> list[Path]:
    names = export.run_file_names(run, spec.layer_label)
    return [folder / name for key, name in names.items()
            if name.endswith(".jsonl") and (spec.witness or not key.startswith("witness"))
            and (spec.test_every_epoch or key != "target_testing_per_epoch")]


def _export_run(
    folder: Path,
    spec: TransferSpec,
    run: int,
    save_source: Callable[[Path], Path],
    target: keras.Model,
    outcome: _RunOutcome,
) -> RunResult:
    names = export.run_file_names(run, spec.layer_label)
    fitted = outcome.fitted
    files = [
        export.save_model(target, folder / names["target_model"]),
        save_source(folder / names["source_model"]),
        export.append_jsonl(
            folder / names["target_training"], export.training_record(fitted.history)
        ),
        export.append_jsonl(folder / names["target_testing"], outcome.target_metrics),
        export.append_jsonl(folder / names["source_testing"], outcome.source_metrics),
        export.append_jsonl(folder / names["quantas"], export.quantas_record(fitted.quantas)),
    ]
    if spec.test_every_epoch:
        files.append(export.append_jsonl(folder / names["target_testing_per_epoch"],
                                         export.training_record(fitted.test_history)))
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
