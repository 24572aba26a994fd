"""The two networks of the reference, by name, and the shapes of their weights (TF-free).

Source and target share one network: three blocks of [Conv2D → ELU → BatchNorm] × 2 →
MaxPool → Dropout, then Flatten → Dense → ELU → Dropout → Dense(softmax). The seed's tool
(and the KES 2021 paper's code) has 64-128-512 filters and a Dense(2048); the reference's
2025 revision narrowed it to 64-128-256 and Dense(1024). The shapes live here, without
TensorFlow, so that weights files can be checked where TensorFlow is not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: `kes2021`: the seed's tool and the paper's code; `compact2025`: the 2025 revision.
Architecture = Literal["kes2021", "compact2025"]
DEFAULT_ARCHITECTURE: Architecture = "kes2021"
#: Weights of a transferable or output layer: one shape per variable.
Shapes = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Network:
    block_filters: tuple[int, int, int]
    dense_units: int

    def label(self) -> str:
        return f"{'-'.join(map(str, self.block_filters))} + Dense({self.dense_units})"


#: What plots call the transferable layers 0-6 of either network (their numbers, as in
#: the file names): six Conv2D layers, then the Dense layer.
LAYER_NAMES = ("conv 0", "conv 1", "conv 2", "conv 3", "conv 4", "conv 5", "dense 6")

NETWORKS: dict[str, Network] = {
    "kes2021": Network((64, 128, 512), 2048),
    "compact2025": Network((64, 128, 256), 1024),
}


def scaled(units: int, width_multiplier: float) -> int:
    """Filters or units at `width_multiplier` (at least one)."""
    return max(1, round(units * width_multiplier))


def widths(architecture: str, width_multiplier: float = 1.0) -> tuple[tuple[int, ...], int]:
    """(filters of the six Conv2D layers, units of the Dense layer) of a network."""
    network = NETWORKS[architecture]
    filters = tuple(scaled(f, width_multiplier) for f in network.block_filters for _ in (0, 1))
    return filters, scaled(network.dense_units, width_multiplier)


def expected_shapes(architecture: str, width_multiplier: float, input_shape: tuple[int, ...],
                    nb_classes: int) -> dict[str, Shapes]:
    """The variable shapes of every layer with weights, by role: `conv_0`..`conv_5`,
    `bn_0`..`bn_5` (gamma, beta, moving mean, moving variance), `dense_6`, `predictions`."""
    filters, units = widths(architecture, width_multiplier)
    height, width, channels = input_shape
    shapes: dict[str, Shapes] = {}
    previous = channels
    for k, f in enumerate(filters):
        shapes[f"conv_{k}"] = ((3, 3, previous, f), (f,))
        shapes[f"bn_{k}"] = ((f,),) * 4
        previous = f
    flat = (height // 8) * (width // 8) * previous
    shapes["dense_6"] = ((flat, units), (units,))
    shapes["predictions"] = ((units, nb_classes), (nb_classes,))
    return shapes


def describe(architecture: str, width_multiplier: float = 1.0) -> str:
    """`kes2021 (64-128-512 + Dense(2048))`, scaled figures when `width_multiplier` != 1."""
    filters, units = widths(architecture, width_multiplier)
    scale = "" if width_multiplier == 1 else f" at width {width_multiplier}"
    return f"{architecture}{scale} ({filters[0]}-{filters[2]}-{filters[4]} + Dense({units}))"
