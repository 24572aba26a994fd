"""Training behaviour: a frozen source, progress hooks, cancellation, determinism."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from quanta import training
from quanta.datasets import load_dataset
from quanta.errors import Cancelled
from quanta.models import build_model, freeze
from quanta.source_training import train_source
from quanta.transfer import run_transfer
from quanta_spec import SourceSpec, TransferSpec

WIDTH = 0.0625


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("source")
    spec = SourceSpec(source_task="digits", nb_of_epochs=1, nb_of_samples=128, seed=0,
                      width_multiplier=WIDTH)
    return train_source(spec, out).training_dir / "source.weights.h5"


def _spec(weights, **overrides):
    values = dict(source_task="digits", source_weights=str(weights), target_task="digits",
                  layer_to_transfer=2, nb_of_target_epochs=2, nb_of_target_samples=96,
                  seed=7, width_multiplier=WIDTH)
    values.update(overrides)
    return TransferSpec(**values)


def _read(folder):
    return {p.name: p.read_text() for p in sorted(folder.glob("*.jsonl"))}


def test_source_weights_never_change_while_the_target_trains():
    data = load_dataset("digits").take(64)
    source = freeze(build_model(data.input_shape, 10, width_multiplier=WIDTH, name="source"))
    before = [w.numpy().copy() for w in source.weights]  # includes BatchNorm statistics
    target = training.compile_model(
        build_model(data.input_shape, 10, source=source, transfer_layers=range(7),
                    width_multiplier=WIDTH)
    )
    quanta_before = [q.weights_pair() for q in target.layers if q.name.startswith("quanta_")]
    training.fit(target, data.x_train, training.one_hot(data.y_train, 10), 2)
    for old, new in zip(before, source.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy(), err_msg=new.path)
    quanta_after = [q.weights_pair() for q in target.layers if q.name.startswith("quanta_")]
    assert quanta_after != quanta_before  # while the target's own parameters did train


def test_progress_hook_reports_every_epoch_of_every_run(source_weights, tmp_path):
    events = []
    result = run_transfer(_spec(source_weights, nb_of_runs=2), tmp_path, on_epoch=events.append)
    assert [(e.run, e.epoch) for e in events] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(e.nb_of_runs == 2 and e.nb_of_epochs == 2 for e in events)
    assert all(set(e.quantas) == {"2"} for e in events)
    assert all("loss" in e.metrics and "categorical_accuracy" in e.metrics for e in events)
    last = json.loads((result.experiment_dir / "quantas_r_1_l_2.jsonl").read_text())
    assert events[-1].quantas["2"]["source"] == pytest.approx(last["2"]["quantas"]["source"][-1])
    # The frozen source scores the same in every run.
    assert result.runs[0].source_metrics == result.runs[1].source_metrics
    # Where the time went, phase by phase.
    assert set(result.timings) == {"data", "source", "build", "train", "evaluate", "export"}
    assert all(seconds > 0 for seconds in result.timings.values())
    assert set(result.train_timings) == {"setup", "first_step", "steps", "epoch_end"}
    assert sum(result.train_timings.values()) <= result.timings["train"]


def test_cancel_stops_within_one_batch_and_writes_nothing(source_weights, tmp_path,
                                                          monkeypatch):
    asked = []

    def should_cancel():
        asked.append(1)
        return len(asked) >= 2

    batches = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)

    # Asked before every batch when the interval allows it: the answer stops the batch
    # it was asked before, at the latest.
    monkeypatch.setattr(training, "CANCEL_CHECK_S", 0.0)
    with pytest.raises(Cancelled, match="epoch 1 of 2"):
        run_transfer(_spec(source_weights), tmp_path / "a", should_cancel=should_cancel,
                     callbacks=[Count()])
    assert len(asked) == 2 and len(batches) <= 2
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("*.keras"))
    # With the default interval it is asked before the first batch, not before every one.
    asked.clear()
    monkeypatch.setattr(training, "CANCEL_CHECK_S", 3600.0)
    run_transfer(_spec(source_weights), tmp_path / "b", should_cancel=should_cancel)
    assert len(asked) == 1


def test_the_frozen_source_is_saved_once_while_its_file_lasts(source_weights, tmp_path,
                                                              monkeypatch):
    import zipfile

    from quanta import export, transfer

    monkeypatch.setattr(transfer, "SAVED_SOURCE", transfer._SavedSource())
    saved = []
    real_save = export.save_model

    def save(model, path):
        saved.append(model.name)
        return real_save(model, path)

    monkeypatch.setattr(export, "save_model", save)
    first = run_transfer(_spec(source_weights, nb_of_runs=3, nb_of_target_epochs=1),
                         tmp_path / "a")
    assert saved.count("source") == 1 and saved.count("target") == 3
    # A worker's next job with the same source links the file the first one wrote...
    second = run_transfer(_spec(source_weights, nb_of_target_epochs=1), tmp_path / "b")
    assert saved.count("source") == 1
    written = first.experiment_dir / "source_r_0_l_2.keras"
    assert (second.experiment_dir / "source_r_0_l_2.keras").stat().st_ino == written.stat().st_ino
    # ...until that file is gone (a job deleted, its files moved to a bucket).
    kept = tmp_path / "kept.keras"
    written.rename(kept)
    third = run_transfer(_spec(source_weights, nb_of_target_epochs=1), tmp_path / "c")
    assert saved.count("source") == 2
    files = [zipfile.ZipFile(first.experiment_dir / f"source_r_{r}_l_2.keras")
             for r in (1, 2)] + [zipfile.ZipFile(kept), zipfile.ZipFile(
                 third.experiment_dir / "source_r_0_l_2.keras")]
    for name in ("config.json", "model.weights.h5"):
        assert len({f.read(name) for f in files}) == 1


def test_tensorflow_is_seeded_once_per_process_and_every_run_still_repeats(monkeypatch):
    """Setting TensorFlow's global seed empties its kernel cache, so that every run's
    first step would set its kernels up again: it is set once per process, while
    Python's, NumPy's and Keras's generators are seeded for every run."""
    import random

    import tensorflow as tf

    from quanta_spec.streams import Stream

    calls = []
    monkeypatch.setattr(training, "_TENSORFLOW_SEEDED", False)
    monkeypatch.setattr(tf.random, "set_seed", calls.append)
    training.set_determinism(1, Stream.TARGET_INIT)
    first = (random.random(), np.random.random(), keras.random.uniform(()).numpy())
    training.set_determinism(2, Stream.TARGET_INIT)
    other = random.random()
    training.set_determinism(1, Stream.TARGET_INIT)
    again = (random.random(), np.random.random(), keras.random.uniform(()).numpy())
    assert len(calls) == 1
    assert first == again and other != first[0]


def test_seeded_runs_are_identical_and_use_every_core(source_weights, tmp_path):
    import tensorflow as tf

    spec = _spec(source_weights, nb_of_runs=2, nb_of_target_epochs=1)
    first = run_transfer(spec, tmp_path / "a")
    second = run_transfer(spec, tmp_path / "b")
    assert _read(first.experiment_dir) == _read(second.experiment_dir)
    # Runs differ from each other, and another seed gives other results.
    files = _read(first.experiment_dir)
    assert files["quantas_r_0_l_2.jsonl"] != files["quantas_r_1_l_2.jsonl"]
    other = run_transfer(_spec(source_weights, seed=8, nb_of_target_epochs=1), tmp_path / "c")
    assert _read(other.experiment_dir)["quantas_r_0_l_2.jsonl"] != files["quantas_r_0_l_2.jsonl"]
    # Determinism comes from op determinism, not from a single thread.
    assert tf.config.threading.get_intra_op_parallelism_threads() != 1
    assert tf.config.threading.get_inter_op_parallelism_threads() != 1


def test_witness_is_trained_from_scratch_and_gives_the_transfer_gain(source_weights, tmp_path):
    result = run_transfer(_spec(source_weights, witness=True, nb_of_target_epochs=1), tmp_path)
    (run,) = result.runs
    folder = result.experiment_dir
    (witness,) = [json.loads(line) for line in
                  (folder / "testing_metrics_of_witness_r_0_l_2.jsonl").read_text().splitlines()]
    assert witness == run.witness_metrics
    (history,) = [json.loads(line) for line in
                  (folder / "training_metrics_of_witness_r_0_l_2.jsonl").read_text().splitlines()]
    assert list(history) == ["0"]
    assert run.transfer_gain == pytest.approx(
        run.target_metrics["categorical_accuracy"] - witness["categorical_accuracy"]
    )
    # Without the option, no witness files.
    plain = run_transfer(_spec(source_weights, nb_of_target_epochs=1), tmp_path / "plain")
    assert plain.runs[0].witness_metrics is None
    assert not list(plain.experiment_dir.glob("*witness*"))


def test_source_is_loaded_and_scored_once_per_weights_file(source_weights, tmp_path,
                                                            monkeypatch):
    import os
    import shutil

    from quanta import sources
    from quanta_spec.lru import LRU

    # Its own copy of the weights and empty caches of its own: rewriting the shared file,
    # or emptying the process's caches, would make every later test of this module load
    # a new source and trace every target again.
    source_weights = Path(shutil.copy(source_weights, tmp_path / "source.weights.h5"))
    monkeypatch.setattr(sources, "SOURCES", LRU(size=sources.SOURCES.size))
    monkeypatch.setattr(sources, "SOURCE_METRICS", LRU(size=sources.SOURCE_METRICS.size))
    evaluated = []
    real_evaluate = training.evaluate

    def counting_evaluate(model, x, y):
        evaluated.append(model.name)
        return real_evaluate(model, x, y)

    monkeypatch.setattr(training, "evaluate", counting_evaluate)
    first = run_transfer(_spec(source_weights, layer_to_transfer=0, nb_of_target_epochs=1,
                               nb_of_runs=2), tmp_path / "a")
    second = run_transfer(_spec(source_weights, layer_to_transfer=6, nb_of_target_epochs=1),
                          tmp_path / "b")
    assert evaluated.count("source") == 1 and evaluated.count("target") == 3
    assert first.runs[1].source_metrics == second.runs[0].source_metrics
    assert len(sources.SOURCES) == 1
    # A weights file rewritten in place is loaded (and scored) again.
    stat = source_weights.stat()
    os.utime(source_weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    run_transfer(_spec(source_weights, nb_of_target_epochs=1), tmp_path / "c")
    assert evaluated.count("source") == 2
    assert len(sources.SOURCES) == 2


class _Crash(Exception):
    pass


_UNINTERRUPTED: dict = {}


@pytest.mark.parametrize(("crash_at", "precomputed", "shuffle"),
                         [(("epoch", 2), False, False), (("export", 3), False, False),
                          (("epoch", 2), True, False), (("epoch", 2), False, True)])
def test_interrupted_run_resumes_to_the_same_files(source_weights, tmp_path, monkeypatch,
                                                   crash_at, precomputed, shuffle):
    # In both data orders: the reference's (the same batches every epoch) and reshuffled.
    spec = _spec(source_weights, nb_of_runs=2, nb_of_target_epochs=3, witness=not precomputed,
                 augment_data=True, source_inference_mode=precomputed, nb_of_target_samples=64,
                 shuffle=shuffle, test_every_epoch=shuffle)
    if spec not in _UNINTERRUPTED:  # the same reference run serves both crash points
        _UNINTERRUPTED[spec] = run_transfer(spec, tmp_path / "plain")
    plain = _UNINTERRUPTED[spec]

    where, when = crash_at
    events = []

    def crash_in_epoch(event):
        events.append((event.run, event.epoch))
        if where == "epoch" and event.run == 1 and event.epoch == when:
            raise _Crash  # as if the worker died after epoch 2 of run 1 was saved

    from quanta import export

    appended = []
    real_append = export.append_jsonl

    def crash_in_export(path, record):
        appended.append(path)
        if where == "export" and len(appended) == 6 + when:  # inside run 1's export
            raise _Crash
        return real_append(path, record)

    monkeypatch.setattr(export, "append_jsonl", crash_in_export)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        run_transfer(spec, tmp_path / "resumed", on_epoch=crash_in_epoch, checkpoint_dir=ckpt)
    assert (ckpt / "run_0" / "state.json").exists()
    events.clear()
    resumed = run_transfer(spec, tmp_path / "resumed", on_epoch=crash_in_epoch,
                           checkpoint_dir=ckpt)
    if where == "epoch":
        assert events == [(1, 3)]  # run 0 not redone; run 1 goes on after epoch 2
    else:
        assert events == []  # training was over; only the export is redone
    assert _read(resumed.experiment_dir) == _read(plain.experiment_dir)
    assert [r.target_metrics for r in resumed.runs] == [r.target_metrics for r in plain.runs]
    assert not ckpt.exists()  # checkpoints are removed once every run is exported


def test_precomputed_source_features_match_the_on_the_fly_computation(source_weights, tmp_path):
    from quanta import sources

    spec = _spec(source_weights, layer_to_transfer=-1, source_inference_mode=True)
    sources.FEATURES.clear()
    cached = run_transfer(spec, tmp_path / "cached")
    assert len(sources.FEATURES) == 1
    on_the_fly = run_transfer(spec, tmp_path / "on_the_fly", source_cache_bytes=0)
    assert len(sources.FEATURES) == 1  # over budget: nothing cached
    a, b = _read(cached.experiment_dir), _read(on_the_fly.experiment_dir)
    assert a.keys() == b.keys()
    # The features match to float rounding (oneDNN's results vary by ~1e-8 with the batch
    # size); Adam steps by about the learning rate whatever the gradient's size, so the
    # quanta agree within a few steps' reach, and the losses closely.
    first = json.loads(a["training_metrics_of_target_r_0_l_all.jsonl"])["0"]
    second = json.loads(b["training_metrics_of_target_r_0_l_all.jsonl"])["0"]
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-4)
    qa, qb = json.loads(a["quantas_r_0_l_all.jsonl"]), json.loads(b["quantas_r_0_l_all.jsonl"])
    steps = 2 * 3
    for k in qa:
        np.testing.assert_allclose(qa[k]["quanta_weights"], qb[k]["quanta_weights"],
                                   atol=2 * steps * training.LEARNING_RATE)
    # The exported target is the full model: it computes the source features itself.
    import keras

    target = keras.saving.load_model(cached.experiment_dir / "target_r_0_l_all.keras")
    assert "source_trunk" in [layer.name for layer in target.layers]
    assert len(target.inputs) == 1
    # And differs from the reference mode, where the source's Dropout stays active.
    reference = run_transfer(_spec(source_weights, layer_to_transfer=-1), tmp_path / "ref")
    assert _read(reference.experiment_dir) != _read(cached.experiment_dir)


def test_mixed_precision_keeps_the_quantas_in_float32(source_weights, tmp_path):
    import keras

    result = run_transfer(_spec(source_weights, precision="mixed_bfloat16",
                                nb_of_target_epochs=1), tmp_path)
    target = keras.saving.load_model(result.experiment_dir / "target_r_0_l_2.keras")
    assert target.get_layer("conv_2").compute_dtype == "bfloat16"
    assert target.get_layer("quanta_2").quanta_weights.dtype == "float32"
    assert target.get_layer("predictions").compute_dtype == "float32"
    line = json.loads((result.experiment_dir / "quantas_r_0_l_2.jsonl").read_text())
    assert line["2"]["quanta_weights"][0] == [np.float32(1.1).item(), np.float32(-1.1).item()]
    assert keras.config.dtype_policy().name == "float32"  # the policy is put back
    # The frozen source computes in the run's policy too, its weights in float32; a
    # float32 run after it in the same process gets a float32 source, not the cached one.
    source = keras.saving.load_model(result.experiment_dir / "source_r_0_l_2.keras")
    assert source.get_layer("conv_0").compute_dtype == "bfloat16"
    assert source.get_layer("conv_0").kernel.dtype == "float32"
    plain = run_transfer(_spec(source_weights, nb_of_target_epochs=1), tmp_path / "plain")
    source = keras.saving.load_model(plain.experiment_dir / "source_r_0_l_2.keras")
    assert source.get_layer("conv_0").compute_dtype == "float32"


@pytest.mark.parametrize("options", [dict(witness=True, augment_data=True),
                                     dict(layer_to_transfer=-1, source_inference_mode=True)])
def test_runs_of_one_shape_reuse_a_traced_model_and_match_a_new_one(source_weights, tmp_path,
                                                                   monkeypatch, options):
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from quanta import traced_models, transfer

    # A cache of its own (as empty as a cleared one), so that the later tests still find
    # the models the earlier ones traced.
    monkeypatch.setattr(transfer, "TRACED_MODELS", traced_models.TracedModels())
    traced = []
    real_make_function = TensorFlowTrainer._make_function

    def counting(model, step_function):
        traced.append(model.name)
        return real_make_function(model, step_function)

    monkeypatch.setattr(TensorFlowTrainer, "_make_function", counting)
    # Earlier runs of the same shape, with other seeds, leave trained models behind (one
    # epoch is enough: a kept model whose weights, optimizer or random state were not put
    # back would already differ from a new one after its first step).
    options = {"nb_of_target_epochs": 1, **options}
    run_transfer(_spec(source_weights, seed=3, nb_of_runs=2, **options), tmp_path / "warm")
    reused = run_transfer(_spec(source_weights, **options), tmp_path / "reused")
    # One train function and one test function per model, for the three runs.
    assert traced.count("target") + traced.count("target_trainer") == 2
    assert traced.count("witness") == (2 if options.get("witness") else 0)
    assert transfer.TRACED_MODELS.reused == 2 * (2 if options.get("witness") else 1)

    # Kept for none (QUANTA_TRACED_MODELS=0): every run builds and traces its own model.
    monkeypatch.setattr(transfer, "TRACED_MODELS", traced_models.TracedModels(size=0))
    new = run_transfer(_spec(source_weights, **options), tmp_path / "new")
    assert transfer.TRACED_MODELS.reused == 0 and not transfer.TRACED_MODELS.items
    assert _read(reused.experiment_dir) == _read(new.experiment_dir)
    assert reused.runs[0].target_metrics == new.runs[0].target_metrics


def test_checkpoints_wait_for_their_interval(source_weights, tmp_path, monkeypatch):
    from quanta import checkpoint

    clock = [1000.0]
    monkeypatch.setattr(checkpoint, "monotonic", lambda: clock[0])
    saved = []
    real_save = checkpoint.save_model
    monkeypatch.setattr(checkpoint, "save_model",
                        lambda model, path: saved.append(path.name) or real_save(model, path))

    def one_minute_per_epoch(event):
        clock[0] += 60.0

    spec = _spec(source_weights, nb_of_target_epochs=3)
    run_transfer(spec, tmp_path / "every", on_epoch=one_minute_per_epoch,
                 checkpoint_dir=tmp_path / "every_ckpt")
    assert saved == ["model_epoch_1.keras", "model_epoch_2.keras", "model_epoch_3.keras"]
    saved.clear()
    # Saved once 100 s have passed since the run started (the save comes before the
    # progress hook moves the clock): after epoch 3 only, 120 s in.
    run_transfer(spec, tmp_path / "spaced", on_epoch=one_minute_per_epoch,
                 checkpoint_dir=tmp_path / "spaced_ckpt", checkpoint_interval_s=100)
    assert saved == ["model_epoch_3.keras"]


def test_a_users_keras_callbacks_see_lambda_s_each_epoch(source_weights, tmp_path):
    """A stock Keras logger (CSVLogger here; W&B or TensorBoard alike) records λ_s per
    layer and the per-epoch test metrics beside the loss, with no extra code."""
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs or {}))

    csv = tmp_path / "log.csv"
    result = run_transfer(_spec(source_weights, layer_to_transfer=-1, test_every_epoch=True),
                          tmp_path, callbacks=[Recorder(), keras.callbacks.CSVLogger(str(csv))])
    assert len(seen) == 2
    finals = result.runs[0].quantas
    for k in range(7):
        assert seen[-1][f"lambda_s_{k}"] == pytest.approx(finals[str(k)]["source"], abs=1e-6)
    assert "test_categorical_accuracy" in seen[0] and "loss" in seen[0]
    header = csv.read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "lambda_s_0", "lambda_s_6", "test_loss"} <= set(header)


def test_tensorboard_event_files_hold_every_epoch(source_weights, tmp_path):
    """`tensorboard: true`: one TensorBoard run per trained model, read back with
    TensorBoard's own reader: the loss and λ_s per epoch, as the JSONL files have them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    result = run_transfer(_spec(source_weights, witness=True, tensorboard=True), tmp_path)
    runs = sorted(p.name for p in (result.experiment_dir / "tensorboard").iterdir())
    assert runs == ["target_r_0_l_2", "witness_r_0_l_2"]
    events = EventAccumulator(str(result.experiment_dir / "tensorboard" / "target_r_0_l_2"
                                  / "train"))
    events.Reload()

    def values(tag):  # TensorFlow 2 writes scalars as tensor summaries
        return [float(make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]

    jsonl = json.loads((result.experiment_dir / "quantas_r_0_l_2.jsonl").read_text())
    assert values("epoch_lambda_s_2") == pytest.approx(jsonl["2"]["quantas"]["source"][1:],
                                                       abs=1e-6)
    assert len(values("epoch_loss")) == 2
