"""The QUANTA layer: two trainable scalars that mix source and target features.

Given the pre-activation outputs of the frozen source layer `Z_S` and of the target's
own layer `Z_T` at the same depth, it outputs `f(λ_s·Z_S + λ_t·Z_T)` with
`(λ_s, λ_t) = softmax(w_s, w_t)`. Because the quantas sum to one, what the target
keeps of the source is measured against what it learns itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

DEFAULT_INITIAL_WEIGHTS = (1.1, -1.1)
#: The name of the layer's one weight, `[[w_s, w_t]]` (the optimizer finds it by it).
WEIGHTS_NAME = "quanta_weights"


@keras.saving.register_keras_serializable(package="quanta")
class QuantaLayer(keras.layers.Layer):
    """Mixes `[Z_S, Z_T]` with learned, mutually exclusive quantas.

    Args:
        transferred_layer: number (0-6) of the built-in networks' layer whose
            transferability is measured, or the name of the layer of a user's network;
            saved with the model so exports can name the quanta by it.
        initial_weights: `(w_s, w_t)` before the softmax; the default `(1.1, -1.1)`
            starts with about 90% of the source's features.
        gradient_multiplier: scales the gradient of `(w_s, w_t)` only. Under Adam a
            factor on the gradient leaves the update unchanged, so the experiments
            scale the quantas' learning rate instead (`quanta.optimizer.QuantaAdam`);
            the argument stays so that models saved with it load.
        activation: the activation `f` applied after mixing (ELU in the paper).
        init_quanta_weights: the reference's name for `initial_weights`, so that the
            targets it saved (an unregistered `quanta_layer.QuantaLayer`) load here.
    """

    def __init__(
        self,
        transferred_layer: int | str | None = None,
        initial_weights: Sequence[float] = DEFAULT_INITIAL_WEIGHTS,
        gradient_multiplier: float = 1.0,
        activation: Any = "elu",
        init_quanta_weights: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if init_quanta_weights is not None:
            initial_weights = np.ravel(np.asarray(init_quanta_weights, dtype=np.float64))
        if len(initial_weights) != 2:
            raise ValueError(f"initial_weights must be (w_s, w_t), got {initial_weights!r}")
        if gradient_multiplier <= 0:
            raise ValueError(f"gradient_multiplier must be > 0, got {gradient_multiplier}")
        self.transferred_layer = transferred_layer
        self.initial_weights = tuple(float(w) for w in initial_weights)
        self.gradient_multiplier = float(gradient_multiplier)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        if len(input_shape) != 2 or tuple(input_shape[0]) != tuple(input_shape[1]):
            raise ValueError(
                f"QuantaLayer takes [Z_S, Z_T] of equal shapes, got {list(input_shape)}"
            )
        # autocast=False: under mixed precision the quantas stay in float32, so a
        # float16 rounding of w never shows up in the measured transferability.
        self.quanta_weights = self.add_weight(
            name=WEIGHTS_NAME,
            shape=(1, 2),
            initializer=keras.initializers.Constant(np.array([self.initial_weights])),
            trainable=True,
            autocast=False,
            dtype="float32",
        )

    def _effective_weights(self) -> Any:
        w = ops.cast(self.quanta_weights, "float32")
        if self.gradient_multiplier == 1.0:
            return w
        m = self.gradient_multiplier
        # (w - stop_gradient(w)) is exactly zero, so the value is w to the bit, while
        # the gradient is 1 + (m - 1) = m.
        return w + (m - 1.0) * (w - ops.stop_gradient(w))

    def call(self, inputs: Sequence[Any]) -> Any:
        z_source, z_target = inputs
        quantas = ops.softmax(self._effective_weights(), axis=-1)
        quantas = ops.cast(quantas, z_target.dtype)
        mixed = quantas[0, 0] * z_source + quantas[0, 1] * z_target
        return self.activation(mixed)

    def compute_output_shape(self, input_shape: Sequence[Sequence[int | None]]) -> Any:
        return input_shape[1]

    def quantas(self) -> tuple[float, float]:
        """The current `(λ_s, λ_t)`."""
        w = np.asarray(keras.ops.convert_to_numpy(self.quanta_weights), dtype=np.float64)[0]
        e = np.exp(w - w.max())
        lam = e / e.sum()
        return float(lam[0]), float(lam[1])

    def weights_pair(self) -> tuple[float, float]:
        """The current `(w_s, w_t)` before the softmax."""
        w = keras.ops.convert_to_numpy(self.quanta_weights)[0]
        return float(w[0]), float(w[1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            transferred_layer=self.transferred_layer,
            initial_weights=list(self.initial_weights),
            gradient_multiplier=self.gradient_multiplier,
            activation=self._activation_name,
        )
        return config


def quanta_layers(model: keras.Model) -> list[QuantaLayer]:
    """The model's QUANTA layers in the order of the layers they measure: by number for
    the built-in networks, in graph order (the model's own) for layers named."""
    found = [layer for layer in model.layers if isinstance(layer, QuantaLayer)]
    if any(isinstance(q.transferred_layer, str) for q in found):
        return found
    return sorted(found, key=lambda q: (q.transferred_layer is None, q.transferred_layer or 0))
