"""Which network a source weights file holds, told before any job runs (h5py only).

A weights file is refused at upload when its layers fit neither network (kes2021,
compact2025) at any width, and a transfer, study or scores job is refused at submission
when its `source_weights` do not fit the spec's network at its `width_multiplier`; when
the spec names no network, the one the file has is written into the job's spec, so the
job (a resume, a study's children) keeps it. The sizes that depend on the task (the
input channels, the image side feeding the Dense layer, the number of classes) are the
file's own here: the worker checks them against the dataset before it loads the file
(`quanta.sources.source_architecture`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quanta_jobs.errors import Invalid
from quanta_spec.networks import NETWORKS, Shapes, describe, widths
from quanta_spec.weights_file import ROLES, WeightsLayoutError, infer_architecture, read_shapes

LOC = ("body", "spec", "source_weights")
#: Widths a spec may ask for (`width_multiplier`: > 0, at most 4).
MAX_WIDTH = 4.0


def _sizes(shapes: dict[str, Shapes]) -> tuple[tuple[int, ...], int] | None:
    """(filters of the six Conv2D layers, units of the Dense layer) the file has."""
    try:
        return tuple(shapes[f"conv_{k}"][0][-1] for k in range(6)), shapes["dense_6"][0][-1]
    except (IndexError, KeyError):
        return None


def _text(sizes: tuple[tuple[int, ...], int]) -> str:
    filters, units = sizes
    return f"filters {'-'.join(map(str, filters))} + Dense({units})"


def fitting_networks(shapes: dict[str, Shapes]) -> list[tuple[str, float]]:
    """The (network, width_multiplier) pairs whose filters and units the file has."""
    sizes = _sizes(shapes)
    if sizes is None:
        return []
    found: list[tuple[str, float]] = []
    for name, network in NETWORKS.items():
        bases = [(f, base) for f, base in zip(sizes[0], (
            *(b for b in network.block_filters for _ in (0, 1)),), strict=True)]
        bases.append((sizes[1], network.dense_units))
        # The width is read off the widest layer first (the most precise), then the others.
        for size, base in sorted(bases, key=lambda pair: -pair[1]):
            width = size / base
            if 0 < width <= MAX_WIDTH and widths(name, width) == sizes:
                found.append((name, width))
                break
    return found


def check_widths(shapes: dict[str, Shapes], architecture: str, width_multiplier: float) -> None:
    """Raises `WeightsLayoutError`, naming the first layer whose shapes differ, unless the
    file has the network's layers at `width_multiplier` (task-dependent sizes aside)."""
    filters, units = widths(architecture, width_multiplier)
    try:
        previous: int | str = shapes["conv_0"][0][2]
        flat = shapes["dense_6"][0][0]
        classes: int | str = shapes["predictions"][1][0]
    except (IndexError, KeyError):
        previous, flat, classes = "C", 0, "K"
    expected: dict[str, tuple[tuple[int | str, ...], ...]] = {}
    for k, f in enumerate(filters):
        expected[f"conv_{k}"] = ((3, 3, previous, f), (f,))
        expected[f"bn_{k}"] = ((f,),) * 4
        previous = f
    # The Dense layer reads the last block's (H/8)·(W/8)·filters values.
    flat_in: int | str = flat if flat > 0 and flat % filters[5] == 0 else f"N*{filters[5]}"
    expected["dense_6"] = ((flat_in, units), (units,))
    expected["predictions"] = ((units, classes), (classes,))
    for role in ROLES:
        if shapes.get(role) != expected[role]:
            want = ", ".join(str(s).replace("'", "") for s in expected[role])
            got = ", ".join(str(s) for s in shapes.get(role, ()))
            raise WeightsLayoutError(
                f"do not fit {describe(architecture, width_multiplier)}: layer {role} "
                f"expects shapes {want}, found {got or 'none'}")


def _neither(shapes: dict[str, Shapes], at: str) -> str:
    sizes = _sizes(shapes)
    found = _text(sizes) if sizes is not None else "no such layers"
    expected = " or ".join(f"{name} ({_text(widths(name))})" for name in NETWORKS)
    return f"fit neither network{at}: expected {expected}, scaled by width_multiplier; " \
        f"found {found}"


def check_upload(path: Path) -> str:
    """The network a weights upload holds (the first that fits); `ValueError` saying
    expected and found shapes if none does."""
    try:
        shapes = read_shapes(path)
    except WeightsLayoutError as exc:
        raise ValueError(str(exc)) from None
    candidates = fitting_networks(shapes)
    if not candidates:
        raise ValueError(f"its layers {_neither(shapes, ' at any width')}")
    problems = []
    for name, width in candidates:
        try:
            check_widths(shapes, name, width)
            return name
        except WeightsLayoutError as exc:
            problems.append(str(exc))
    raise ValueError(f"its layers {problems[0]}")


def network_of(local: Any) -> str | None:
    """The network of a local transfer or scores spec's source weights: the spec's own
    when it names one (checked), else the file's; `Invalid` naming `source_weights` and
    the expected and found shapes when the file does not fit. None for a source spec."""
    path = getattr(local, "source_weights", None)
    if not isinstance(path, str):
        return None
    width = float(local.width_multiplier)
    try:
        shapes = read_shapes(path)
        architecture = local.architecture or infer_architecture(shapes, width)
        if architecture is None:
            raise WeightsLayoutError(_neither(shapes, f" at width_multiplier {width}"))
        check_widths(shapes, architecture, width)
    except WeightsLayoutError as exc:
        given = f" (architecture {local.architecture})" if local.architecture else ""
        raise Invalid(f"source weights{given} {exc}" if str(exc)[:3] in ("do ", "fit")
                      else f"source weights: {exc}", loc=LOC) from None
    return architecture


def same_request(stored: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Whether a retried request (same Idempotency-Key) asks for the stored job: the
    stored spec may name the network the request left to the weights file."""
    if stored == sent:
        return True
    filled = dict(sent)
    if sent.get("architecture") is None and "architecture" in stored:
        filled["architecture"] = stored["architecture"]
    # A study of a user's network stores its layers in graph order, "all" expanded.
    layers, kept = sent.get("layers"), stored.get("layers")
    if isinstance(kept, list) and (layers == "all" or (
            isinstance(layers, list) and sorted(map(str, layers)) == sorted(map(str, kept)))):
        filled["layers"] = kept
    return stored == filled
