"""Going back and forth with the reference's own files.

The reference builds one flat functional model whose layers keep Keras's default names:
its source `.weights.h5` (written by `model.save_weights`) is in that layout, its saved
targets name an unregistered `quanta_layer.QuantaLayer`, and its `quantas_*.jsonl` key
each QUANTA layer by its index in the target's flat layer list. This project nests the
frozen source in the target and names its layers; this module translates:

- `load_source_weights` reads either layout into this project's network,
- `save_reference_weights` writes the reference's layout (what `quanta-train-source`
  writes, so that the reference's code loads it),
- `reference_layer_indices` gives the index the reference's flat target has for each
  QUANTA layer (the `keras_layer_index` of `quantas_*.jsonl`),
- `load_target` loads a target `.keras` file the reference (or this project) saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from quanta import export
from quanta.errors import QuantaError
from quanta.layer import QuantaLayer, quanta_layers
from quanta.models import augmentation
from quanta_spec.lru import LRU
from quanta_spec.weights_file import ROLES, WeightsLayoutError, read_arrays

_INDICES: LRU[tuple[tuple[int, ...], bool], dict[int, int]] = LRU(size=32)


def load_source_weights(model: keras.Model, path: str | Path) -> None:
    """Sets the weights of `model` (this project's network) from a file in either layout.

    The caller checks the shapes first (`quanta_spec.weights_file.check_fits`)."""
    try:
        arrays = read_arrays(path)
    except WeightsLayoutError as exc:
        raise QuantaError(f"source weights '{path}': {exc}") from None
    for role in ROLES:
        model.get_layer(role).set_weights(arrays[role])


def flat_network(input_shape: Sequence[int], nb_classes: int, filters: Sequence[int],
                 units: int) -> keras.Model:
    """The reference's flat source network, with Keras's default layer names: six Conv2D
    layers of `filters`, a Dense of `units`."""
    count: dict[str, int] = {}

    def name(kind: str) -> str:
        n = count.get(kind, 0)
        count[kind] = n + 1
        return kind if n == 0 else f"{kind}_{n}"

    inputs = keras.Input(shape=tuple(input_shape), dtype="uint8", name="input_layer")
    x = keras.layers.Rescaling(1.0 / 255, name=name("rescaling"))(inputs)
    for block in range(3):
        for k in (2 * block, 2 * block + 1):
            x = keras.layers.Conv2D(filters[k], 3, padding="same", name=name("conv2d"))(x)
            x = keras.layers.ELU(name=name("elu"))(x)
            x = keras.layers.BatchNormalization(name=name("batch_normalization"))(x)
        x = keras.layers.MaxPooling2D(2, name=name("max_pooling2d"))(x)
        x = keras.layers.Dropout(0.3, name=name("dropout"))(x)
    x = keras.layers.Flatten(name=name("flatten"))(x)
    x = keras.layers.Dense(units, name=name("dense"))(x)
    x = keras.layers.ELU(name=name("elu"))(x)
    x = keras.layers.Dropout(0.5, name=name("dropout"))(x)
    outputs = keras.layers.Dense(nb_classes, activation="softmax", name=name("dense"))(x)
    return keras.Model(inputs, outputs, name="functional")


def save_reference_weights(model: keras.Model, path: str | Path) -> Path:
    """Writes the weights of `model` (this project's network, either architecture) as the
    reference's `model.save_weights` would."""
    filters = [model.get_layer(f"conv_{k}").filters for k in range(6)]
    flat = flat_network(model.input_shape[1:], model.output_shape[-1], filters,
                        model.get_layer("dense_6").units)
    weighted = [layer for layer in flat.layers if layer.weights]
    by_role = dict(zip(("conv_0", "bn_0", "conv_1", "bn_1", "conv_2", "bn_2", "conv_3", "bn_3",
                        "conv_4", "bn_4", "conv_5", "bn_5", "dense_6", "predictions"),
                       weighted, strict=True))
    for role, layer in by_role.items():
        layer.set_weights(model.get_layer(role).get_weights())
    return export.save_weights(flat, path)


def reference_layer_indices(transferred_layers: Sequence[int], augment: bool = False
                            ) -> dict[int, int]:
    """Transferred layer number to the index of its QUANTA layer in the reference's flat
    target (which holds the source's layers too): Keras orders that list by depth, so the
    index is read off a one-filter copy of that graph, built once per shape."""
    key = (tuple(sorted(set(transferred_layers))), augment)
    return dict(_INDICES.get(key, lambda: _indices(*key)))


def _chain(x: keras.KerasTensor, stop: int | None, activation: object
           ) -> tuple[dict[int, keras.KerasTensor], keras.KerasTensor | None]:
    """The network on `x` with one filter per layer; stops after transferable layer `stop`."""
    z_by_layer = {}
    for block in range(3):
        for k in (2 * block, 2 * block + 1):
            z = z_by_layer[k] = keras.layers.Conv2D(1, 3, padding="same")(x)
            if k == stop:
                return z_by_layer, None
            x = keras.layers.BatchNormalization()(activation(k, z))
        x = keras.layers.Dropout(0.3)(keras.layers.MaxPooling2D(2)(x))
    z = z_by_layer[6] = keras.layers.Dense(1)(keras.layers.Flatten()(x))
    if stop == 6:
        return z_by_layer, None
    x = keras.layers.Dropout(0.5)(activation(6, z))
    return z_by_layer, keras.layers.Dense(2, activation="softmax")(x)


def _indices(layers: tuple[int, ...], augment: bool) -> dict[int, int]:
    inputs = keras.Input(shape=(8, 8, 1))
    z_source, _ = _chain(keras.layers.Rescaling(1.0 / 255)(inputs), max(layers),
                         lambda k, z: keras.layers.ELU()(z))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    if augment:
        for layer in augmentation().layers:  # flat in the reference: one layer each
            x = layer.__class__.from_config(layer.get_config())(x)

    def activation(k: int, z: keras.KerasTensor) -> keras.KerasTensor:
        if k in layers:
            return QuantaLayer(transferred_layer=k)([z_source[k], z])
        return keras.layers.ELU()(z)

    _, outputs = _chain(x, None, activation)
    flat = keras.Model(inputs, outputs)
    return {layer.transferred_layer: i for i, layer in enumerate(flat.layers)
            if isinstance(layer, QuantaLayer)}


def load_target(path: str | Path) -> keras.Model:
    """A saved target, this project's or the reference's (its unregistered QUANTA layer is
    read as this project's, and told which layer it measures from where it sits)."""
    path = Path(path)
    if not path.is_file():
        raise QuantaError(f"previous training '{path}' does not exist")
    try:
        model = keras.saving.load_model(path, custom_objects={"QuantaLayer": QuantaLayer},
                                        safe_mode=True)
    except Exception as exc:
        raise QuantaError(f"cannot load previous training '{path}': {exc}") from exc
    unnamed = [q for q in quanta_layers(model) if q.transferred_layer is None]
    if unnamed:
        _name_reference_quantas(model, path)
    return model


def _name_reference_quantas(model: keras.Model, path: Path) -> None:
    found = [i for i, layer in enumerate(model.layers) if isinstance(layer, QuantaLayer)]
    augment = any(isinstance(layer, keras.layers.RandomFlip) for layer in model.layers)
    candidates = [tuple(range(7))] + [(k,) for k in range(7)]
    for layers in candidates:
        indices = reference_layer_indices(layers, augment)
        if sorted(indices.values()) == found:
            for k, i in indices.items():
                model.layers[i].transferred_layer = k
            return
    raise QuantaError(f"previous training '{path}': its QUANTA layers (at layer indices "
                      f"{found}) are not where the reference puts them")
