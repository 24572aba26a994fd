"""Training a source model: the reference's source-training script."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras

from quanta import export, training
from quanta.checkpoint import RunCheckpoint
from quanta.checkpoint import clear as clear_checkpoints
from quanta.datasets import load_dataset
from quanta.errors import QuantaError
from quanta.layer import QuantaLayer
from quanta.models import build_model
from quanta.reference import save_reference_weights
from quanta.results import EpochEvent, ProgressHook, SourceResult
from quanta.sources import load_previous, precision, summary
from quanta_spec import SourceSpec
from quanta_spec.streams import Stream, stream_seed


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

    `checkpoint_dir`, `callbacks` (Keras callbacks, which see the training metrics in
    their `logs`) and `on_epoch` work as for `run_transfer`.
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
    seed = spec.seed if spec.seeded else None
    training.set_determinism(seed, Stream.SOURCE_INIT)
    resumed = ckpt.resume() if ckpt is not None else None
    so_far = None
    if resumed is not None:
        model, so_far = resumed  # its random states as saved
    elif spec.train_from_previous_training:
        model = load_previous(spec.train_from_previous_training)
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
                    architecture=spec.architecture,
                    name="source",
                )
            )
    if resumed is None:
        training.reseed(model, seed, Stream.SOURCE_TRAINING_DROPOUT)
    result.summary = summary(model)
    if spec.show_only_build:
        return result

    def hook(epoch: int, metrics: dict, quantas: dict) -> None:
        if on_epoch is not None:
            on_epoch(EpochEvent(0, 1, epoch + 1, spec.nb_of_epochs, metrics))

    y_train = training.one_hot(data.y_train, data.nb_classes)
    order_seed = None if seed is None else stream_seed(seed, Stream.SOURCE_TRAINING_ORDER)
    with clock.phase("train"):
        fitted = training.fit(
            model, data.x_train, y_train, spec.nb_of_epochs, order_seed=order_seed,
            resume=so_far,
            on_epoch=hook, should_cancel=should_cancel,
            callbacks=[*(callbacks or []), training.tensorboard_callback(
                folder / "tensorboard" / "source")] if spec.tensorboard else callbacks,
            after_epoch=ckpt.save_epoch if ckpt is not None else None,
            shuffle=spec.shuffle,
        )
    result.train_timings.add(fitted.timings)
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
            # The reference's layout, so that its own code loads this file too.
            save_reference_weights(model, folder / names["weights"]),
            export.append_jsonl(jsonl[0], export.training_record(fitted.history)),
            export.append_jsonl(jsonl[1], result.test_metrics),
        ]
    if ckpt is not None:
        ckpt.finish_export({"test_metrics": result.test_metrics, "summary": result.summary,
                            "files": [str(f) for f in result.files]})
        clear_checkpoints(checkpoint_dir)
    return result
