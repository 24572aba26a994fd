"""The shared network: layer numbering, QUANTA wiring, shapes, witness, width."""

import keras
import numpy as np
import pytest

from quanta.errors import QuantaError
from quanta.layer import QuantaLayer, quanta_layers
from quanta.models import build_model, freeze

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def source():
    return freeze(build_model(SHAPE, 10, width_multiplier=0.0625, name="source"))


def _producer(tensor):
    return tensor._keras_history.operation


@pytest.mark.parametrize("k", range(7))
def test_quanta_layer_sits_after_the_kth_transferable_layer(source, k):
    target = build_model(SHAPE, 5, source=source, transfer_layers=[k], width_multiplier=0.0625)
    (layer,) = quanta_layers(target)
    assert layer.transferred_layer == k
    expected = f"conv_{k}" if k < 6 else "dense_6"
    names = [layer_.name for layer_ in target.layers]
    assert names.index(f"quanta_{k}") == names.index(expected) + 1
    z_source, z_target = layer._inbound_nodes[0].input_tensors
    assert _producer(z_target).name == expected
    assert _producer(z_source).name == "source_trunk"
    # The trunk yields the source's own pre-activation output at that depth.
    trunk = target.get_layer("source_trunk")
    assert _producer(trunk.outputs[0]) is source.get_layer(expected)
    # Every other depth keeps its plain ELU.
    assert f"act_{k}" not in names
    assert len([n for n in names if n.startswith("act_")]) == 6


def test_all_at_once_gives_seven_quanta_layers(source):
    target = build_model(
        SHAPE, 10, source=source, transfer_layers=range(7), width_multiplier=0.0625
    )
    assert [q.transferred_layer for q in quanta_layers(target)] == list(range(7))
    assert not [layer for layer in target.layers if layer.name.startswith("act_")]


def test_output_dense_is_never_transferable(source):
    with pytest.raises(QuantaError, match="0-6"):
        build_model(SHAPE, 10, source=source, transfer_layers=[7])


def test_input_shape_mismatch_names_both_shapes(source):
    with pytest.raises(QuantaError, match=r"\(8, 8, 1\).*\(32, 32, 3\)"):
        build_model((32, 32, 3), 10, source=source, transfer_layers=[0])


def test_source_is_frozen_inside_the_target(source):
    target = build_model(SHAPE, 10, source=source, transfer_layers=[3], width_multiplier=0.0625)
    trunk = target.get_layer("source_trunk")
    assert not trunk.trainable
    assert not trunk.trainable_weights
    source_ids = {id(w) for w in source.weights}
    assert not source_ids & {id(w) for w in target.trainable_weights}


def test_witness_is_the_target_architecture_without_transfer():
    witness = build_model(SHAPE, 10, augment=True, width_multiplier=0.0625, name="witness")
    assert not [layer for layer in witness.layers if isinstance(layer, QuantaLayer)]
    assert "source_trunk" not in [layer.name for layer in witness.layers]
    assert witness.get_layer("augmentation") is not None


@pytest.mark.parametrize(("architecture", "filters", "units"),
                         [("kes2021", (64, 128, 512), 2048), ("compact2025", (64, 128, 256), 1024)])
def test_architecture_width_multiplier_and_classes_shape_the_network(architecture, filters,
                                                                      units):
    full = build_model((32, 32, 3), 100, architecture=architecture)
    assert [full.get_layer(f"conv_{k}").filters for k in range(6)] == [
        f for f in filters for _ in range(2)]
    assert full.get_layer("dense_6").units == units
    assert full.output_shape == (None, 100)
    narrow = build_model((32, 32, 3), 10, width_multiplier=0.25, architecture=architecture)
    assert narrow.get_layer("conv_5").filters == filters[2] // 4
    assert narrow.get_layer("dense_6").units == units // 4


def test_the_seeds_network_is_the_default():
    model = build_model((32, 32, 3), 10)
    assert model.get_layer("conv_5").filters == 512
    assert model.get_layer("dense_6").units == 2048
    with pytest.raises(QuantaError, match="kes2021, compact2025"):
        build_model((32, 32, 3), 10, architecture="vgg")


def _counts(model):
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable + frozen, trainable, frozen


#: (total, trainable, frozen) of cifar10 -> cifar100 targets, measured by the reference
#: semantics document on the reference's own code.
REFERENCE_COUNTS = {
    "kes2021": {(0,): (20_201_894, 20_197_286, 4_608),
                (6,): (40_195_302, 20_197_286, 19_998_016),
                tuple(range(7)): (40_195_314, 20_197_298, 19_998_016)},
    "compact2025": {(0,): (5_448_614, 5_445_030, 3_584),
                    (6,): (10_791_142, 5_445_030, 5_346_112),
                    tuple(range(7)): (10_791_154, 5_445_042, 5_346_112)},
}


@pytest.mark.parametrize("architecture", ["kes2021", "compact2025"])
def test_cifar10_to_cifar100_targets_have_the_reference_parameter_counts(architecture):
    source = freeze(build_model((32, 32, 3), 10, architecture=architecture, name="source"))
    for layers, expected in REFERENCE_COUNTS[architecture].items():
        target = build_model((32, 32, 3), 100, source=source, transfer_layers=layers,
                             architecture=architecture)
        assert _counts(target) == expected, layers


def test_images_are_uint8_and_rescaled_inside_the_model():
    model = build_model(SHAPE, 10, width_multiplier=0.0625)
    assert model.inputs[0].dtype == "uint8"
    assert model.get_layer("rescaling").scale == pytest.approx(1 / 255)
    assert isinstance(model.layers[1], keras.layers.Rescaling)
