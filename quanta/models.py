"""The network that source and target share, and the wiring of QUANTA layers into it.

Three blocks of [Conv2D → ELU → BatchNorm] × 2 → MaxPool → Dropout(0.3), then Flatten →
Dense → ELU → Dropout(0.5) → Dense(softmax). Two widths, by name (`quanta_spec.networks`):
`kes2021`, the seed's tool, with 64, 128 and 512 filters and a Dense(2048) (the default),
and `compact2025`, the reference's 2025 revision, with 64-128-256 and Dense(1024). The
transferable layers are numbered in order: the six Conv2D layers are 0-5, the Dense is
6; the output layer is never transferred. Every layer has a fixed name (`conv_3`,
`act_3`, `bn_3`, ...) so that tests and checkpoints can find layers by number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras

from quanta.errors import QuantaError
from quanta.layer import DEFAULT_INITIAL_WEIGHTS, QuantaLayer, quanta_layers
from quanta_spec import NB_TRANSFERABLE_LAYERS
from quanta_spec.networks import DEFAULT_ARCHITECTURE, NETWORKS, widths


def transferable_layer_name(k: int) -> str:
    """The name of transferable layer k: `conv_0`..`conv_5`, `dense_6`."""
    if not 0 <= k < NB_TRANSFERABLE_LAYERS:
        raise QuantaError(f"layer {k} is not transferable: layers are numbered 0-6")
    return f"conv_{k}" if k < 6 else f"dense_{k}"


def augmentation() -> keras.Sequential:
    """The reference's augmentation, applied after rescaling (target only)."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical"),
            keras.layers.RandomTranslation(0.1, 0.1),
            keras.layers.RandomRotation(0.1),
            keras.layers.RandomZoom(0.1),
        ],
        name="augmentation",
    )


def build_model(
    input_shape: Sequence[int],
    nb_classes: int,
    *,
    source: keras.Model | None = None,
    transfer_layers: Iterable[int] = (),
    augment: bool = False,
    width_multiplier: float = 1.0,
    architecture: str = DEFAULT_ARCHITECTURE,
    initial_weights: Sequence[float] = DEFAULT_INITIAL_WEIGHTS,
    source_inference: bool = False,
    name: str = "model",
) -> keras.Model:
    """Builds a source, a witness (no `source`) or a QUANTA target (with `source`).

    For a target, the frozen `source` is fed the same input images, and at each layer
    of `transfer_layers` the plain ELU is replaced by a `QuantaLayer` fed with the
    source's and the target's pre-activation outputs at that depth.

    By default the source's Dropout layers follow the target's training mode, as in the
    reference (Keras does not turn Dropout off for a frozen layer); `source_inference`
    runs the source in inference mode.
    """
    if architecture not in NETWORKS:
        raise QuantaError(f"unknown architecture '{architecture}': expected one of "
                          f"{', '.join(NETWORKS)}")
    filters, units = widths(architecture, width_multiplier)
    transfer_layers = tuple(sorted(set(transfer_layers)))
    for k in transfer_layers:
        transferable_layer_name(k)  # validates k
    if transfer_layers and source is None:
        raise QuantaError("a target with QUANTA layers needs a source model")
    input_shape = tuple(int(d) for d in input_shape)
    if source is not None:
        source_shape = tuple(source.input_shape[1:])
        if source_shape != input_shape:
            raise QuantaError(
                f"source and target must have the same input shape: the source takes "
                f"{source_shape}, the target task's images are {input_shape}"
            )

    inputs = keras.Input(shape=input_shape, dtype="uint8", name="images")
    source_features: dict[int, keras.KerasTensor] = {}
    if transfer_layers:
        trunk = source_trunk(source, transfer_layers, inference=source_inference)
        outputs = trunk(inputs)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        source_features = dict(zip(transfer_layers, outputs, strict=True))

    def activation(k: int, z: keras.KerasTensor) -> keras.KerasTensor:
        if k in source_features:
            layer = QuantaLayer(
                transferred_layer=k,
                initial_weights=initial_weights,
                name=f"quanta_{k}",
            )
            return layer([source_features[k], z])
        return keras.layers.ELU(name=f"act_{k}")(z)

    x = keras.layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    if augment:
        x = augmentation()(x)
    k = 0
    for block in range(3):
        for _ in range(2):
            z = keras.layers.Conv2D(filters[k], 3, padding="same", name=f"conv_{k}")(x)
            x = activation(k, z)
            x = keras.layers.BatchNormalization(name=f"bn_{k}")(x)
            k += 1
        x = keras.layers.MaxPooling2D(2, name=f"pool_{block}")(x)
        x = keras.layers.Dropout(0.3, name=f"dropout_{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    z = keras.layers.Dense(units, name="dense_6")(x)
    x = activation(6, z)
    x = keras.layers.Dropout(0.5, name="dropout_head")(x)
    # float32 output whatever the policy: a float16 softmax loses small probabilities.
    outputs = keras.layers.Dense(
        nb_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def source_trunk(source: keras.Model, layers: Sequence[int], *,
                 inference: bool = False) -> keras.Model:
    """The frozen part of `source` that yields its pre-activation outputs at `layers`.

    `inference` leaves out its Dropout layers: a nested model's `training=False` is
    overridden by the outer model's training mode, so this is how the source is kept in
    inference mode inside a training target.
    """
    names = [transferable_layer_name(k) for k in layers]
    if inference:
        inputs = keras.Input(shape=source.input_shape[1:], dtype="uint8", name="images")
        x, found = inputs, {}
        for layer in source.layers:
            if isinstance(layer, keras.layers.InputLayer | keras.layers.Dropout):
                continue
            x = layer(x)
            if layer.name in names:
                found[layer.name] = x
            if len(found) == len(names):
                break
        trunk = keras.Model(inputs, [found[n] for n in names], name="source_trunk")
    else:
        outputs = [source.get_layer(n).output for n in names]
        trunk = keras.Model(source.inputs, outputs, name="source_trunk")
    trunk.trainable = False
    return trunk


def freeze(model: keras.Model) -> keras.Model:
    """Makes every layer of `model` non-trainable (BatchNorm then runs in inference mode)."""
    model.trainable = False
    for layer in model.layers:
        layer.trainable = False
    return model


def _rewire(model: keras.Model, images: keras.KerasTensor,
            source_features: dict[int, keras.KerasTensor]) -> keras.KerasTensor:
    """Calls `model`'s own layers again on `images`, with `source_features` as Z_S.

    The network is a chain (plus the source trunk that feeds the QUANTA layers), so its
    layers in order rebuild it; the new graph shares every layer, hence every weight.
    """
    x = images
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name == "source_trunk":
            continue
        if isinstance(layer, QuantaLayer):
            x = layer([source_features[layer.transferred_layer], x])
        else:
            x = layer(x)
    return x


def with_source_inputs(target: keras.Model) -> keras.Model:
    """The target with the source's features as inputs instead of the source trunk.

    It shares every layer with `target`: training it trains `target`. It lets the
    frozen source's activations be computed once and fed to every epoch.
    """
    trunk = target.get_layer("source_trunk")
    layers = [q.transferred_layer for q in quanta_layers(target)]
    images = keras.Input(shape=target.input_shape[1:], dtype="uint8", name="images")
    features = {
        k: keras.Input(shape=tuple(out.shape[1:]), name=f"source_features_{k}")
        for k, out in zip(layers, trunk.outputs, strict=True)
    }
    outputs = _rewire(target, images, features)
    return keras.Model([images, *features.values()], outputs, name="target_trainer")


def with_source_trunk(trainer: keras.Model, source: keras.Model) -> keras.Model:
    """The inverse of `with_source_inputs`: the full target, fed by `source` in inference
    mode, sharing every layer with `trainer`."""
    layers = [q.transferred_layer for q in quanta_layers(trainer)]
    images = keras.Input(shape=trainer.input_shape[0][1:], dtype="uint8", name="images")
    outputs = source_trunk(source, layers, inference=True)(images)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    features = dict(zip(layers, outputs, strict=True))
    return keras.Model(images, _rewire(trainer, images, features), name="target")
