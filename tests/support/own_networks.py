"""Small real networks of the kinds researchers bring (a residual functional model with a
shared layer, a Sequential model, a `keras.applications` network without its weights),
trained briefly on `digits` (offline) so that a source has learnt something."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from quanta.datasets import load_dataset
from quanta.image_folders import fit_images


def digits_at(shape: tuple[int, int, int], n: int = 1440) -> tuple[np.ndarray, np.ndarray]:
    """The digits training images at `shape` (uint8) and their labels."""
    data = load_dataset("digits")
    return fit_images(np.asarray(data.x_train[:n]), shape), np.asarray(data.y_train[:n])


def residual(input_shape: tuple[int, int, int] = (16, 16, 3), classes: int = 10
             ) -> keras.Model:
    """Rescaling, a Conv2D with a fused ReLU, a residual branch (Conv2D, BatchNorm, Add),
    a 1x1 Conv2D used in two branches, a global pooling and a Dense head."""
    images = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(images)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    branch = keras.layers.Conv2D(16, 3, padding="same", name="c2")(x)
    branch = keras.layers.BatchNormalization(name="bn2")(branch)
    shared = keras.layers.Conv2D(16, 1, name="shared")
    x = keras.layers.Add(name="add")([shared(x), shared(branch)])
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(images, outputs, name="residual")


def sequential(input_shape: tuple[int, int, int] = (16, 16, 3), classes: int = 10
               ) -> keras.Model:
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Rescaling(1 / 255, name="scale"),
        keras.layers.Conv2D(8, 3, activation="elu", name="conv_a"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Conv2D(8, 3, name="conv_b"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(classes, activation="softmax", name="out"),
    ], name="plain")


def mobilenet(input_shape: tuple[int, int, int] = (32, 32, 3), classes: int = 10
              ) -> keras.Model:
    """`keras.applications.MobileNetV3Small` without its ImageNet weights (no download)."""
    return keras.applications.MobileNetV3Small(
        input_shape=input_shape, weights=None, classes=classes, include_preprocessing=True)


def trained(model: keras.Model, path: Path, *, epochs: int = 2, samples: int = 512,
            seed: int = 0) -> Path:
    """`model` trained a little on digits at its input size, saved at `path`."""
    keras.utils.set_random_seed(seed)
    x, y = digits_at(tuple(int(d) for d in model.inputs[0].shape[1:]), samples)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path
