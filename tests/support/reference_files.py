"""Source weights files in the reference's layout, written with h5py alone (no Keras), so
that service tests can upload real ones: a flat model's groups under Keras's default
names (`conv2d`, `conv2d_1`, ..., `batch_normalization`, ..., `dense`, `dense_1`) with
their variables as `layers/<name>/vars/<i>`, beside the layers that have none."""

from __future__ import annotations

import io

import h5py
import numpy as np

from quanta_spec.networks import Shapes, expected_shapes

#: The tests' tiny source: digits (8x8 grey images, 10 classes) at width 0.0625.
WIDTH = 0.0625
DIGITS = ((8, 8, 1), 10)


def _default_names() -> dict[str, str]:
    names = {f"conv_{k}": "conv2d" if k == 0 else f"conv2d_{k}" for k in range(6)}
    names.update({f"bn_{k}": "batch_normalization" if k == 0 else f"batch_normalization_{k}"
                  for k in range(6)})
    names.update(dense_6="dense", predictions="dense_1")
    return names


def reference_weights_bytes(architecture: str = "kes2021", width: float = WIDTH,
                            input_shape: tuple[int, ...] = DIGITS[0],
                            nb_classes: int = DIGITS[1], seed: int = 0) -> bytes:
    """A `.weights.h5` as the reference's `model.save_weights` writes it, with small
    random kernels and neutral batch-normalisation statistics (it trains as a source)."""
    return shapes_bytes(expected_shapes(architecture, width, input_shape, nb_classes), seed)


def shapes_bytes(shapes: dict[str, Shapes], seed: int = 0) -> bytes:
    """A reference-layout weights file whose variables have `shapes` (by role)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        layers = handle.create_group("layers")
        for empty in ("rescaling", "elu", "max_pooling2d", "dropout", "flatten"):
            layers.create_group(empty).create_group("vars")
        for role, name in _default_names().items():
            group = layers.create_group(name).create_group("vars")
            for i, shape in enumerate(shapes[role]):
                if role.startswith("bn_"):  # gamma, beta, moving mean, moving variance
                    value = np.ones(shape) if i in (0, 3) else np.zeros(shape)
                elif i == 0:
                    value = rng.normal(0, 0.2, shape)
                else:
                    value = np.zeros(shape)
                group.create_dataset(str(i), data=value.astype("float32"))
        handle.create_group("vars")
    return buffer.getvalue()
