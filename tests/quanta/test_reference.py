"""Fidelity to the reference's own files and protocol: its weights files and saved targets
load, its layer indices are reported, its data order is the default, the quanta learning
rate works, the target can be tested every epoch, studies take the paper's preset."""

import json

import h5py
import keras
import numpy as np
import pytest

from quanta import cli, reference, training
from quanta.datasets import load_dataset
from quanta.errors import QuantaError
from quanta.layer import quanta_layers
from quanta.models import build_model, freeze
from quanta.source_training import train_source
from quanta.transfer import run_transfer
from quanta_spec import RemoteStudySpec, SourceSpec, TransferSpec
from quanta_spec.networks import widths
from quanta_spec.streams import Stream
from quanta_spec.weights_file import infer_architecture, read_shapes
from tests.support.reference_files import WIDTH
from tests.support.reference_models import flat_source, flat_target


def _spec(weights, **overrides):
    values = dict(source_task="digits", source_weights=str(weights), target_task="digits",
                  layer_to_transfer=0, nb_of_target_epochs=1, nb_of_target_samples=64,
                  seed=3, width_multiplier=WIDTH)
    values.update(overrides)
    return TransferSpec(**values)


@pytest.mark.parametrize("architecture", ["kes2021", "compact2025"])
def test_a_reference_weights_file_of_either_network_runs(architecture, tmp_path):
    flat = flat_source(architecture)
    path = tmp_path / "SourceModel.weights.h5"
    flat.save_weights(path)
    with h5py.File(path) as f:
        names = set(f["layers"])
    assert {n for n in names if n.startswith("conv2d")} and "conv_0" not in names
    assert infer_architecture(read_shapes(path), WIDTH) == architecture

    result = run_transfer(_spec(path, layer_to_transfer=-1), tmp_path / "out")
    target = keras.saving.load_model(result.experiment_dir / "target_r_0_l_all.keras")
    trunk = target.get_layer("source_trunk")
    kernels = [layer for layer in flat.layers if isinstance(layer, keras.layers.Conv2D)]
    for k, layer in enumerate(kernels):
        np.testing.assert_array_equal(trunk.get_layer(f"conv_{k}").get_weights()[0],
                                      layer.get_weights()[0])
    assert target.get_layer("dense_6").units == widths(architecture, WIDTH)[1]
    # And through the command line, the seed's way.
    assert cli.main(["-s", "digits", "-sw", str(path), "-t", "digits", "-l", "6",
                     "--nb_of_target_samples", "64", "--width_multiplier", str(WIDTH),
                     "-o", str(tmp_path / "cli")]) == 0


def test_weights_that_do_not_fit_name_expected_and_found_shapes(tmp_path, capsys):
    path = tmp_path / "wide.weights.h5"
    flat_source("kes2021", width=0.125).save_weights(path)
    with pytest.raises(QuantaError, match=r"conv_0 expects shapes \(3, 3, 1, 4\), \(4,\), "
                                          r"found \(3, 3, 1, 8\), \(8,\)"):
        run_transfer(_spec(path, architecture="compact2025"), tmp_path / "a")
    with pytest.raises(QuantaError, match=r"do not fit kes2021 at width 0.0625"):
        run_transfer(_spec(path), tmp_path / "b")  # fits neither: named against the default
    code = cli.main(["-s", "digits", "-sw", str(path), "-t", "digits", "-l", "0",
                     "--width_multiplier", str(WIDTH), "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "expects shapes" in err


def test_source_training_writes_the_reference_layout(tmp_path):
    spec = SourceSpec(source_task="digits", nb_of_epochs=1, nb_of_samples=64, seed=0,
                      width_multiplier=WIDTH, architecture="compact2025")
    result = train_source(spec, tmp_path)
    path = result.training_dir / "source.weights.h5"
    flat = flat_source("compact2025", seed=9)
    flat.load_weights(path)  # what the reference's code does with it
    ours = keras.saving.load_model(result.training_dir / "source.keras")
    convs = [layer for layer in flat.layers if isinstance(layer, keras.layers.Conv2D)]
    for k, layer in enumerate(convs):
        np.testing.assert_array_equal(layer.get_weights()[0],
                                      ours.get_layer(f"conv_{k}").get_weights()[0])
    bns = [layer for layer in flat.layers if isinstance(layer, keras.layers.BatchNormalization)]
    np.testing.assert_array_equal(bns[5].get_weights()[3], ours.get_layer("bn_5").get_weights()[3])
    flat.save_weights(tmp_path / "flat.weights.h5")
    with h5py.File(path) as ours_file, h5py.File(tmp_path / "flat.weights.h5") as flat_file:
        assert set(ours_file["layers"]) == set(flat_file["layers"])  # the very same layout


def _indices(model):
    return [i for i, layer in enumerate(model.layers) if type(layer).__name__ == "QuantaLayer"]


def test_keras_layer_index_is_the_reference_flat_models(tmp_path):
    # The reference's own output, as the semantics document reads it off the seed's tool.
    assert reference.reference_layer_indices([0]) == {0: 5}
    assert reference.reference_layer_indices([6]) == {6: 55}
    assert list(reference.reference_layer_indices(range(7)).values()) == [
        6, 12, 22, 28, 38, 44, 55]
    source = flat_source("kes2021")
    for augment in (False, True):
        for layers in ([0], [3], [6], list(range(7))):
            flat = flat_target(source, layers, augment=augment)
            assert list(reference.reference_layer_indices(layers, augment).values()) == \
                _indices(flat), (layers, augment)
    # What a run writes.
    path = tmp_path / "s.weights.h5"
    source.save_weights(path)
    result = run_transfer(_spec(path, layer_to_transfer=-1, augment_data=True), tmp_path)
    line = json.loads((result.experiment_dir / "quantas_r_0_l_all.jsonl").read_text())
    flat = flat_target(source, list(range(7)), augment=True)
    assert [line[str(k)]["keras_layer_index"] for k in range(7)] == _indices(flat)


def test_a_target_the_reference_saved_loads_and_continues(tmp_path):
    source = flat_source("kes2021")
    weights = tmp_path / "s.weights.h5"
    source.save_weights(weights)
    flat = flat_target(source, [2])
    flat.compile(optimizer="adam", loss="categorical_crossentropy")
    saved = tmp_path / "target_r_0_l_2.keras"
    flat.save(saved)
    config = json.loads(__import__("zipfile").ZipFile(saved).read("config.json"))
    quanta_config = [c for c in config["config"]["layers"] if c["class_name"] == "QuantaLayer"]
    assert quanta_config[0]["module"] == "quanta_layer"
    with pytest.raises(TypeError):  # why the reference cannot load it again
        keras.saving.load_model(saved)

    loaded = reference.load_target(saved)
    (layer,) = quanta_layers(loaded)
    assert layer.transferred_layer == 2
    assert layer.quantas()[0] == pytest.approx(0.9002495, abs=1e-6)
    result = run_transfer(_spec(weights, layer_to_transfer=2,
                                train_from_previous_training=str(saved)), tmp_path / "out")
    line = json.loads((result.experiment_dir / "quantas_r_0_l_2.jsonl").read_text())
    assert line["2"]["keras_layer_index"] == _indices(flat)[0]
    assert line["2"]["quantas"]["source"][0] == pytest.approx(0.9002495, abs=1e-6)
    assert line["2"]["quantas"]["source"][-1] != line["2"]["quantas"]["source"][0]


def test_batches_keep_their_order_unless_shuffled():
    x, y = np.arange(100), np.arange(100)

    def epochs(first, last, shuffle):
        batches = [b.tolist() for b, _ in
                   training.epoch_dataset(x, y, 1, first, last, shuffle).as_numpy_iterator()]
        steps = training.steps_per_epoch(len(y))
        return [batches[i:i + steps] for i in range(0, len(batches), steps)]

    first, second = epochs(0, 2, shuffle=False)
    assert first[0] == list(range(32)) and first[-1] == list(range(96, 100))
    assert second == first
    epoch0, epoch1 = epochs(0, 2, shuffle=True)
    assert epoch0 != first and epoch1 != epoch0
    assert all(batch == sorted(batch) for batch in epoch0 + epoch1)
    assert sorted(row for batch in epoch0 for row in batch) == list(range(100))
    assert epochs(1, 2, shuffle=True) == [epoch1]  # a resume at epoch 1


def test_quanta_learning_rate_multiplier_moves_the_quantas_faster():
    data = load_dataset("digits").take(128)
    source = freeze(build_model(data.input_shape, 10, width_multiplier=WIDTH, name="source"))
    moved = {}
    for factor in (1.0, 10.0):
        training.set_determinism(5, Stream.TARGET_INIT)
        target = training.compile_model(
            build_model(data.input_shape, 10, source=source, transfer_layers=[3],
                        width_multiplier=WIDTH, source_inference=True), factor)
        fitted = training.fit(target, data.x_train, training.one_hot(data.y_train, 10), 1,
                              order_seed=5)
        curve = fitted.quantas.source["3"]
        moved[factor] = abs(curve[-1] - curve[0])
    assert moved[1.0] > 0
    assert 5 < moved[10.0] / moved[1.0] < 15
    # The old name still reads as this factor.
    spec = TransferSpec(source_task="digits", source_weights="s.h5", target_task="digits",
                        layer_to_transfer=0, quanta_gradient_multiplier=4)
    assert spec.quanta_learning_rate_multiplier == 4
    assert "quanta_gradient_multiplier" not in spec.model_dump()


def test_test_every_epoch_writes_a_line_per_run_and_changes_nothing_else(tmp_path):
    path = tmp_path / "s.weights.h5"
    flat_source("kes2021").save_weights(path)
    spec = _spec(path, nb_of_target_epochs=2, nb_of_runs=2)
    plain = run_transfer(spec, tmp_path / "plain")
    tested = run_transfer(spec.model_copy(update={"test_every_epoch": True}), tmp_path / "t")
    folder = tested.experiment_dir
    lines = [json.loads(line) for line in
             (folder / "testing_metrics_of_target_per_epoch_r_1_l_0.jsonl").read_text()
             .splitlines()]
    assert len(lines) == 1 and list(lines[0]) == ["0", "1"]
    assert lines[0]["1"] == pytest.approx(tested.runs[1].target_metrics)
    for name in ("quantas_r_1_l_0.jsonl", "training_metrics_of_target_r_1_l_0.jsonl"):
        assert (folder / name).read_text() == (plain.experiment_dir / name).read_text()
    assert not list(plain.experiment_dir.glob("*per_epoch*"))


def test_the_kes2021_study_preset_fills_in_the_paper_and_yields_to_explicit_fields():
    base = dict(source_task="cifar10", target_task="cifar100", source_weights={"upload": "u"})
    paper = RemoteStudySpec(protocol="kes2021", **base)
    assert paper.study_layers == tuple(range(7))
    assert (paper.nb_of_runs, paper.nb_of_target_epochs) == (30, 60)
    assert paper.augment_data and paper.test_every_epoch and paper.architecture == "kes2021"
    child = paper.child_spec(4, 29)
    assert child.test_every_epoch and child.nb_of_target_epochs == 60 and child.nb_of_runs == 1
    mine = RemoteStudySpec(protocol="kes2021", nb_of_runs=3, layers=[0, 6], augment_data=False,
                           architecture="compact2025", **base)
    assert mine.study_layers == (0, 6) and mine.nb_of_runs == 3
    assert not mine.augment_data and mine.architecture == "compact2025"
    assert mine.nb_of_target_epochs == 60  # not given: the preset's
    with pytest.raises(ValueError, match="layers"):
        RemoteStudySpec(**base)  # without a preset, layers are required
    assert RemoteStudySpec.model_validate(paper.model_dump()) == paper  # stored and read back
