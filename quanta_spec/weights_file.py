"""Reading a source `.weights.h5` file without TensorFlow: its layout, shapes and network.

Keras's `save_weights` names each layer's group after its class, numbered in layer
order (`conv2d`, `conv2d_1`, ..., `batch_normalization`, ..., `dense`, `dense_1`), with
the variables as `layers/<name>/vars/<i>`: the reference's flat source model, and this
project's, write that layout. Groups named by role (`conv_0`..`conv_5`, `bn_0`..`bn_5`,
`dense_6`, `predictions`) are read too.

Only h5py and NumPy are used, so the API can check an upload (and tell its network)
before any job runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO

import h5py
import numpy as np

from quanta_spec.errors import QuantaError
from quanta_spec.networks import (
    DEFAULT_ARCHITECTURE,
    NETWORKS,
    Shapes,
    describe,
    expected_shapes,
    widths,
)

#: Roles in network order: the layers that carry weights.
ROLES: tuple[str, ...] = (
    *(f"conv_{k}" for k in range(6)), *(f"bn_{k}" for k in range(6)), "dense_6", "predictions"
)
_DEFAULT_NAME = re.compile(r"^(conv2d|batch_normalization|dense)(?:_(\d+))?$")


class WeightsLayoutError(QuantaError):
    """The file is not a source weights file this network can use."""


def _vars(group: h5py.Group) -> list[np.ndarray] | None:
    vars_ = group.get("vars")
    if not isinstance(vars_, h5py.Group) or not len(vars_):
        return None
    return [vars_[str(i)] for i in range(len(vars_))]


def _read(file: h5py.File) -> dict[str, list[h5py.Dataset]]:
    """Group name to its variables, for the top-level layers that have weights."""
    layers = file.get("layers")
    if not isinstance(layers, h5py.Group):
        raise WeightsLayoutError("not a Keras weights file: it has no 'layers' group")
    found = {}
    for name, group in layers.items():
        if isinstance(group, h5py.Group) and (variables := _vars(group)) is not None:
            found[name] = variables
    return found


def roles(names: list[str] | set[str]) -> dict[str, str]:
    """Each role's group name, for either layout; raises if the names fit neither."""
    names = set(names)
    if set(ROLES) <= names:
        return {role: role for role in ROLES}
    by_kind: dict[str, list[tuple[int, str]]] = {"conv2d": [], "batch_normalization": [],
                                                 "dense": []}
    for name in names:
        if match := _DEFAULT_NAME.match(name):
            by_kind[match[1]].append((int(match[2] or 0), name))
    counts = {kind: len(found) for kind, found in by_kind.items()}
    if counts != {"conv2d": 6, "batch_normalization": 6, "dense": 2}:
        shown = ", ".join(sorted(names)) or "none"
        raise WeightsLayoutError(
            "the layers with weights are not the network's: expected conv_0..conv_5, bn_0..bn_5, "
            "dense_6, predictions, or Keras's default names (6 conv2d, 6 batch_normalization, "
            f"2 dense), found {shown}"
        )
    ordered = {kind: [name for _, name in sorted(found)] for kind, found in by_kind.items()}
    out = {f"conv_{k}": ordered["conv2d"][k] for k in range(6)}
    out.update({f"bn_{k}": ordered["batch_normalization"][k] for k in range(6)})
    out["dense_6"], out["predictions"] = ordered["dense"]
    return out


def _open(source: str | Path | IO[bytes]) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise WeightsLayoutError(f"not an HDF5 weights file ({exc})") from None


def read_shapes(source: str | Path | IO[bytes]) -> dict[str, Shapes]:
    """The shapes of every variable, by role (`conv_0`, ..., `predictions`)."""
    with _open(source) as file:
        found = _read(file)
        return {role: tuple(tuple(int(d) for d in v.shape) for v in found[name])
                for role, name in roles(list(found)).items()}


def read_arrays(source: str | Path | IO[bytes]) -> dict[str, list[np.ndarray]]:
    """The variables' values, by role, in each layer's own order."""
    with _open(source) as file:
        found = _read(file)
        return {role: [np.asarray(v) for v in found[name]]
                for role, name in roles(list(found)).items()}


def infer_architecture(shapes: dict[str, Shapes], width_multiplier: float = 1.0) -> str | None:
    """The network whose filters and units (at `width_multiplier`) the shapes have, if any."""
    found = tuple(shapes[f"conv_{k}"][0][-1] for k in range(6)), shapes["dense_6"][0][-1]
    for name in NETWORKS:
        if widths(name, width_multiplier) == found:
            return name
    return None


def check_fits(shapes: dict[str, Shapes], architecture: str, width_multiplier: float,
               input_shape: tuple[int, ...], nb_classes: int) -> None:
    """Raises, naming the first layer whose shapes differ, unless the file fits the network
    for images of `input_shape` and `nb_classes` classes."""
    expected = expected_shapes(architecture, width_multiplier, tuple(input_shape), nb_classes)
    for role in ROLES:
        if shapes[role] != expected[role]:
            want = ", ".join(str(s) for s in expected[role])
            got = ", ".join(str(s) for s in shapes[role])
            raise WeightsLayoutError(
                f"do not fit {describe(architecture, width_multiplier)} for images "
                f"{tuple(input_shape)} with {nb_classes} classes: layer {role} expects "
                f"shapes {want}, found {got}"
            )


def resolve_architecture(shapes: dict[str, Shapes], architecture: str | None,
                         width_multiplier: float) -> str:
    """The given network, or the one the file's shapes have (the default if neither fits:
    `check_fits` then says what differs)."""
    if architecture is not None:
        return architecture
    return infer_architecture(shapes, width_multiplier) or DEFAULT_ARCHITECTURE
