"""Baseline transferability scores of a frozen source, per transferable layer, without training.

The source runs once, in inference mode and in batches, over the target samples. Each
transferable layer k yields one feature vector per sample, on which `quanta.scores`
computes LogME, H-score, TransRate and GBC; the source's softmax output over its own
classes gives LEEP and NCE for the source as a whole. These sit beside QUANTA's trained
measure (λ_s per layer) so that a study can say how well each estimate ranks the layers.

Which output of layer k: its activation `act_k` (post-activation ELU), the representation
that the rest of the source receives and the usual choice of feature-based estimates
(their papers score the activations of a layer, typically the penultimate one). The
BatchNorm after it is a per-channel affine map belonging to the next stage. QUANTA itself
mixes the pre-activation output Z_S into the target; the estimates answer a different
question (how separable the source's representation leaves the target classes), so they
use the representation itself. The convolutional layers' (H, W, C) maps are global-average
-pooled to C values, as is usual for such scores; the Dense layer is taken as it is.

Inference mode means Dropout off and BatchNorm on its moving statistics: the source is
scored as the fixed feature extractor it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from quanta import scores
from quanta.errors import QuantaError
from quanta.models import transferable_layer_name
from quanta_spec import NB_TRANSFERABLE_LAYERS

#: Images per inference batch: features are pooled per batch, so memory stays small.
DEFAULT_BATCH_SIZE = 256
ALL_LAYERS = tuple(range(NB_TRANSFERABLE_LAYERS))


@dataclass(frozen=True)
class SourceOutputs:
    """What one inference pass of the source gives: per layer k, `features[k]` (samples ×
    channels or units, float32), and the source classifier's `probabilities` (samples ×
    source classes)."""

    features: dict[int | str, np.ndarray]
    probabilities: np.ndarray


def _feature_model(source: keras.Model, layers: tuple[int | str, ...]) -> keras.Model:
    """The source's features at `layers`: the built-in networks' activation `act_k` of
    layer k; a user network's named layer's own output (post-activation where the layer
    has one: what the rest of its network receives)."""
    outputs = []
    for k in layers:
        if isinstance(k, str):
            try:
                activation = source.get_layer(k).output
            except ValueError as exc:
                raise QuantaError(f"the source has no layer '{k}'") from exc
        else:
            transferable_layer_name(k)  # validates k
            try:
                activation = source.get_layer(f"act_{k}").output
            except ValueError as exc:
                raise QuantaError(
                    f"the source has no activation 'act_{k}' after layer {k}: baseline "
                    f"scores need a plain source network (not a QUANTA target)") from exc
        if len(activation.shape) == 4:  # a convolutional layer: (N, H, W, C) -> (N, C)
            activation = keras.layers.GlobalAveragePooling2D(
                dtype="float32", name=f"pooled_{k}")(activation)
        elif len(activation.shape) != 2:
            raise QuantaError(f"layer {k}'s output {tuple(activation.shape)} is not a "
                              "feature map or a vector: it cannot be scored")
        outputs.append(activation)
    outputs.append(source.outputs[0])
    return keras.Model(source.inputs, outputs, name="source_features")


def source_outputs(source: keras.Model, x: np.ndarray, *,
                   layers: Iterable[int | str] = ALL_LAYERS,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> SourceOutputs:
    """Runs `source` once over the images `x` and returns every asked layer's features
    (global-average-pooled for the convolutional ones) and its softmax output."""
    layers = tuple(dict.fromkeys(layers))  # the given order: numbers come sorted
    if not layers:
        raise QuantaError("baseline scores need at least one layer")
    if len(x) == 0:
        raise QuantaError("baseline scores need at least one target sample")
    model = _feature_model(source, layers)
    outputs = model.predict(x, batch_size=batch_size, verbose=0)
    features = {k: np.asarray(out, dtype=np.float32) for k, out in zip(layers, outputs[:-1],
                                                                        strict=True)}
    return SourceOutputs(features, np.asarray(outputs[-1], dtype=np.float64))


def baseline_scores(source: keras.Model, x: np.ndarray, y: np.ndarray, *,
                    layers: Iterable[int | str] = ALL_LAYERS, batch_size: int = DEFAULT_BATCH_SIZE,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The baseline scores of `source` on the target samples `x` with labels `y`.

    Returns {"nb_of_samples": n, "layers": {"0": {"dims": D, "logme": ..., "h_score": ...,
    "transrate": ..., "gbc": ...}, ...}, "source": {"leep": ..., "nce": ...}}, layer keys
    as strings like the rest of QUANTA's JSON. `options` go to the scores by name (see
    `quanta.scores.feature_scores`).
    """
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise QuantaError(f"{len(y)} labels for {len(x)} target samples")
    if len(x) < 2:
        raise QuantaError(f"baseline scores need at least 2 target samples, got {len(x)}")
    outputs = source_outputs(source, x, layers=layers, batch_size=batch_size)
    per_layer = {}
    for k, f in outputs.features.items():
        per_layer[str(k)] = {"dims": int(f.shape[1]),
                             **scores.feature_scores(f, y, **dict(options or {}))}
    return {"nb_of_samples": len(x), "layers": per_layer,
            "source": scores.classifier_scores(outputs.probabilities, y)}
