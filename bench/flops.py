"""FLOPs of one training step, counted from a model's layer shapes (no backend calls).

Shared by `flop_bound.py` (CPU, the TensorFlow path) and `gpu_jax.py` (a GPU through
Keras's JAX backend), so that both divide by the same count.

Only convolutions and dense layers are counted (BatchNorm, ELU, pooling, the QUANTA
layer's mixing and the optimizer are memory-bound and small in FLOPs): a fraction of the
machine's rate well below 1 says where the rest of the step's time goes, not that a FLOP
was missed.
"""

from __future__ import annotations

import keras


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every leaf layer of `model`, nested models opened, each once."""
    seen: dict[int, keras.layers.Layer] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.Model):
            seen.setdefault(id(layer), layer)
    return list(seen.values())


def forward_flops(layer: keras.layers.Layer) -> int:
    """Multiply-adds x 2 of one sample through a convolution or a dense layer (else 0)."""
    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, out_channels = layer.output.shape
        kh, kw = layer.kernel_size
        in_channels = layer.input.shape[-1]
        return 2 * height * width * kh * kw * in_channels * out_channels
    if isinstance(layer, keras.layers.Dense):
        return 2 * layer.input.shape[-1] * layer.units
    return 0


def step_flops(model: keras.Model, batch: int) -> dict[str, float]:
    """GFLOPs of one training step of `model`: frozen layers forward, trainable ones
    forward and backward (the gradients with respect to the weights and to the input,
    each as costly as the forward; the first trainable convolution needs no input
    gradient)."""
    frozen = trainable = 0
    first = True
    for layer in leaf_layers(model):
        flops = forward_flops(layer)
        if not flops:
            continue
        if layer.trainable:
            trainable += flops * (2 if first and isinstance(layer, keras.layers.Conv2D) else 3)
            first = False
        else:
            frozen += flops
    return {"frozen_gflop": frozen * batch / 1e9, "trainable_gflop": trainable * batch / 1e9,
            "gflop": (frozen + trainable) * batch / 1e9}
