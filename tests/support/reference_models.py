"""The reference's networks as its own code builds them (flat functional Keras models,
layers named by Keras), for tests that check our files and models against its."""

import keras

from quanta_spec.networks import widths
from tests.support.reference_files import WIDTH

SHAPE = (8, 8, 1)  # digits


class QuantaLayer(keras.layers.Layer):
    """The reference's layer as its saved files describe it: unregistered, module
    `quanta_layer`, config `activation` and `init_quanta_weights`."""

    def __init__(self, activation="elu", init_quanta_weights=(1.1, -1.1), **kwargs):
        super().__init__(**kwargs)
        self.activation_name = activation
        self.init_quanta_weights = list(init_quanta_weights)

    def build(self, input_shape):
        self.quanta_weights = self.add_weight(
            shape=(1, 2), initializer=keras.initializers.Constant([self.init_quanta_weights]))

    def call(self, inputs):
        q = keras.ops.softmax(self.quanta_weights)
        return keras.activations.get(self.activation_name)(q[0, 0] * inputs[0]
                                                           + q[0, 1] * inputs[1])

    def get_config(self):
        return {**super().get_config(), "activation": self.activation_name,
                "init_quanta_weights": self.init_quanta_weights}


QuantaLayer.__module__ = "quanta_layer"


def flat_source(architecture, width=WIDTH, classes=10, seed=0):
    """The reference's source: a flat functional model, layers named by Keras."""
    keras.utils.set_random_seed(seed)
    filters, units = widths(architecture, width)
    inputs = keras.Input(SHAPE, dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for block in range(3):
        for k in (2 * block, 2 * block + 1):
            x = keras.layers.Conv2D(filters[k], 3, padding="same")(x)
            x = keras.layers.BatchNormalization()(keras.layers.ELU()(x))
        x = keras.layers.Dropout(0.3)(keras.layers.MaxPooling2D(2)(x))
    x = keras.layers.Dense(units)(keras.layers.Flatten()(x))
    x = keras.layers.Dropout(0.5)(keras.layers.ELU()(x))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def flat_target(source, transfer, augment=False, classes=10, width=WIDTH):
    """The reference's target: the source's layers called on the same input, flat."""
    filters, units = widths("kes2021", width)
    inputs = keras.Input(SHAPE, dtype="uint8")

    def chain(x, stop, act, make):
        z_by = {}
        for block in range(3):
            for k in (2 * block, 2 * block + 1):
                z = z_by[k] = make("conv", k)(x)
                if k == stop:
                    return z_by, None
                x = make("bn", k)(act(k, z))
            x = keras.layers.Dropout(0.3)(keras.layers.MaxPooling2D(2)(x))
        z = z_by[6] = make("dense", 6)(keras.layers.Flatten()(x))
        if stop == 6:
            return z_by, None
        x = keras.layers.Dropout(0.5)(act(6, z))
        return z_by, keras.layers.Dense(classes, activation="softmax")(x)

    frozen = [layer for layer in source.layers if layer.weights]

    def source_layer(kind, k):
        layer = frozen[2 * k + (kind == "bn")] if k < 6 else frozen[12]
        layer.trainable = False
        return layer

    def new_layer(kind, k):
        if kind == "conv":
            return keras.layers.Conv2D(filters[k], 3, padding="same")
        return keras.layers.BatchNormalization() if kind == "bn" else keras.layers.Dense(units)

    z_source, _ = chain(keras.layers.Rescaling(1 / 255)(inputs), max(transfer),
                        lambda k, z: keras.layers.ELU()(z), source_layer)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if augment:
        for layer in (keras.layers.RandomFlip("horizontal_and_vertical"),
                      keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomRotation(0.1),
                      keras.layers.RandomZoom(0.1)):
            x = layer(x)

    def act(k, z):
        return QuantaLayer()([z_source[k], z]) if k in transfer else keras.layers.ELU()(z)

    _, outputs = chain(x, None, act, new_layer)
    return keras.Model(inputs, outputs)

