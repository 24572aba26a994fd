"""The shared network: layer numbering, QUANTA wiring, shapes, witness, width."""

import keras
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


def test_width_multiplier_and_classes_shape_the_network():
    full = build_model((32, 32, 3), 100)
    assert full.get_layer("conv_0").filters == 64
    assert full.get_layer("conv_5").filters == 256
    assert full.get_layer("dense_6").units == 1024
    assert full.output_shape == (None, 100)
    narrow = build_model((32, 32, 3), 10, width_multiplier=0.25)
    assert narrow.get_layer("conv_0").filters == 16
    assert narrow.get_layer("dense_6").units == 256


def test_images_are_uint8_and_rescaled_inside_the_model():
    model = build_model(SHAPE, 10, width_multiplier=0.0625)
    assert model.inputs[0].dtype == "uint8"
    assert model.get_layer("rescaling").scale == pytest.approx(1 / 255)
    assert isinstance(model.layers[1], keras.layers.Rescaling)
