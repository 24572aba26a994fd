"""The layers of a saved Keras network, read from its config without TensorFlow.

A researcher's own network (`source_model`) is a Keras 3 functional or Sequential model.
Which of its layers a QUANTA layer can follow, and which layer is its classifier head,
is decided here, from the config Keras writes (`config.json` of a `.keras` file, or
`model.get_config()` of a built model), so that the command line's `quanta layers`, the
API (which never imports TensorFlow) and the library that rewires the graph all apply
the same rule:

- the network must be `Functional` or `Sequential` (a subclassed model's graph cannot be
  read, so it cannot be rebuilt layer by layer) with one input and one output;
- its head is the last layer with weights on the path to the output (a `Dense`, or the
  1×1 `Conv2D` of `keras.applications` networks), possibly followed by layers without
  weights (`Flatten`, `Activation`, `Dropout`); it is replaced for the target's classes;
- a layer is transferable when it comes before the head, is called once (a layer shared
  between branches has several outputs, so "its output" is ambiguous), and has a layer
  with weights at or before it (mixing two copies of the rescaled input measures nothing).
  Keras operations in the graph (`x + y` on tensors) are not layers and are not listed.

Layers are listed in graph order (the order Keras saved them: every layer after its
inputs), with their class, output shape and number of parameters.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The model classes whose graph the config spells out.
GRAPH_MODELS = ("Functional", "Sequential")
#: Layers without weights that may follow the head (the classifier's own tail).
#: (Not pooling: a network that ends pooling feature maps is a backbone without a head.)
HEAD_TAIL = frozenset({"Activation", "Softmax", "Flatten", "Reshape", "Dropout"})
#: Keys of a head layer's config that hold its number of outputs.
HEAD_WIDTH_KEYS = ("units", "filters")


class GraphError(ValueError):
    """The network cannot be used as a QUANTA source; the message says why."""


@dataclass(frozen=True)
class GraphLayer:
    """One layer of the network, as `quanta layers` prints it."""

    name: str
    class_name: str
    output_shape: tuple[int | None, ...] | None
    params: int
    transferable: bool
    #: Why a layer is not transferable (None when it is).
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "class": self.class_name,
                "output_shape": list(self.output_shape) if self.output_shape else None,
                "params": self.params, "transferable": self.transferable,
                "reason": self.reason}


@dataclass(frozen=True)
class NetworkGraph:
    """What QUANTA needs to know of a network before building anything."""

    kind: str
    input_shape: tuple[int | None, ...]
    layers: tuple[GraphLayer, ...]
    head: str
    nb_outputs: int
    params: int = field(default=0)

    @property
    def transferable(self) -> tuple[str, ...]:
        """The names a QUANTA layer may follow, in graph order."""
        return tuple(layer.name for layer in self.layers if layer.transferable)

    def check_layers(self, names: list[str] | tuple[str, ...]) -> None:
        """Raise GraphError naming the first of `names` a QUANTA layer cannot follow."""
        known = {layer.name: layer for layer in self.layers}
        for name in names:
            layer = known.get(name)
            if layer is None:
                options = ", ".join(self.transferable[:8])
                more = ", ..." if len(self.transferable) > 8 else ""
                raise GraphError(f"the network has no layer '{name}'; transferable layers "
                                 f"are {options}{more} (list them with `quanta layers`)")
            if not layer.transferable:
                raise GraphError(f"layer '{name}' cannot be transferred: {layer.reason}")

    def in_graph_order(self, names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """`names` (checked) sorted as the graph has them, without repeats."""
        self.check_layers(names)
        wanted = set(names)
        return tuple(layer.name for layer in self.layers if layer.name in wanted)


def _shape(value: Any) -> tuple[int | None, ...] | None:
    if isinstance(value, list) and all(v is None or isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _tensor_histories(value: Any, depth: int = 0) -> list[tuple[str, tuple[int | None, ...]]]:
    """The (producing layer, shape) of every tensor in a node's arguments."""
    if depth > 32:
        raise GraphError("its config nests a node's arguments deeper than any model's")
    found: list[tuple[str, tuple[int | None, ...]]] = []
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            config = value.get("config") or {}
            history = config.get("keras_history")
            shape = _shape(config.get("shape"))
            if isinstance(history, list) and history and isinstance(history[0], str):
                found.append((history[0], shape or ()))
            return found
        for item in value.values():
            found += _tensor_histories(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            found += _tensor_histories(item, depth + 1)
    return found


def _is_operation(layer: Mapping[str, Any]) -> bool:
    """A Keras operation on tensors (`x + y`), saved among the layers but not a layer."""
    return str(layer.get("module") or "").startswith("keras.src.ops.")


def read_graph(config: Mapping[str, Any], params: Mapping[str, int]) -> NetworkGraph:
    """The network of a Keras model config; `params` gives each layer's weight count
    (read from the weights, which the config does not state for every layer class)."""
    kind = config.get("class_name")
    if kind not in GRAPH_MODELS:
        raise GraphError(f"it is a subclassed model ('{str(kind)[:60]}'), whose layers "
                         "cannot be rebuilt one by one; save a functional or Sequential "
                         "model (keras.Model(inputs, outputs) or keras.Sequential)")
    inner = config.get("config")
    if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
        raise GraphError("its config has no list of layers")
    raw = [layer for layer in inner["layers"] if isinstance(layer, dict)]
    if kind == "Sequential":
        return _sequential(raw, params)
    return _functional(inner, raw, params)


def _name(layer: Mapping[str, Any]) -> str:
    name = layer.get("name") or (layer.get("config") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise GraphError("a layer of its config has no name")
    return name


def _functional(inner: Mapping[str, Any], raw: list[dict[str, Any]],
                params: Mapping[str, int]) -> NetworkGraph:
    inputs, outputs = inner.get("input_layers"), inner.get("output_layers")
    if not _single_endpoint(inputs) or not _single_endpoint(outputs):
        raise GraphError("it has several inputs or outputs; QUANTA takes a classifier with "
                         "one image input and one output")
    names = [_name(layer) for layer in raw]
    if len(set(names)) != len(names):
        raise GraphError("two layers of its config share a name")
    parents: dict[str, set[str]] = {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    calls: dict[str, int] = {}
    for layer, name in zip(raw, names, strict=True):
        nodes = layer.get("inbound_nodes") or []
        calls[name] = len(nodes)
        parents[name] = set()
        for producer, shape in _tensor_histories(nodes):
            parents[name].add(producer)
            shapes.setdefault(producer, shape)
    input_name = _endpoint_name(inputs)
    input_layer = next((layer for layer, n in zip(raw, names, strict=True)
                        if n == input_name), None)
    input_shape = _input_shape(input_layer)
    return _graph("Functional", raw, names, parents, shapes, calls, _endpoint_name(outputs),
                  input_shape, params)


def _sequential(raw: list[dict[str, Any]], params: Mapping[str, int]) -> NetworkGraph:
    if not raw:
        raise GraphError("it has no layers")
    input_shape = _input_shape(raw[0]) if raw[0].get("class_name") == "InputLayer" else None
    if input_shape is None:
        build = raw[0].get("build_config") or {}
        input_shape = _shape(build.get("input_shape"))
    if input_shape is None:
        raise GraphError("its input shape is unknown (a Sequential model saved before it "
                         "was built); build it with keras.Input(shape) first")
    names = [_name(layer) for layer in raw]
    parents, shapes, calls = {}, {}, {}
    previous: str | None = None
    for layer, name in zip(raw, names, strict=True):
        parents[name] = {previous} if previous else set()
        calls[name] = 1
        build = layer.get("build_config") or {}
        shape = _shape(build.get("input_shape"))
        if previous is not None and shape is not None:
            shapes[previous] = shape
        previous = name
    return _graph("Sequential", raw, names, parents, shapes, calls, names[-1], input_shape,
                  params)


def _single_endpoint(value: Any) -> bool:
    """One `[name, node, tensor]` triple (or a list holding one)."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return True
    return isinstance(value, list) and len(value) == 1 and _single_endpoint(value[0])


def _endpoint_name(value: Any) -> str:
    return value[0] if isinstance(value[0], str) else value[0][0]


def _input_shape(layer: Mapping[str, Any] | None) -> tuple[int | None, ...]:
    config = (layer or {}).get("config") or {}
    shape = _shape(config.get("batch_shape") or config.get("batch_input_shape"))
    if shape is None or len(shape) != 4:
        raise GraphError("its input is not a batch of images (expected a shape "
                         f"(None, height, width, channels), found {shape})")
    return shape[1:]


def _graph(kind: str, raw: list[dict[str, Any]], names: list[str],
           parents: dict[str, set[str]], shapes: dict[str, tuple[int | None, ...]],
           calls: dict[str, int], output: str, input_shape: tuple[int | None, ...],
           params: Mapping[str, int]) -> NetworkGraph:
    by_name = dict(zip(names, raw, strict=True))
    if output not in by_name:
        raise GraphError(f"its output layer '{output}' is not among its layers")
    head = output
    while by_name[head].get("class_name") in HEAD_TAIL and params.get(head, 0) == 0:
        before = [p for p in parents[head] if p in by_name]
        if len(before) != 1:
            break
        head = before[0]
    head_config = by_name[head].get("config") or {}
    if params.get(head, 0) == 0 or not any(k in head_config for k in HEAD_WIDTH_KEYS):
        raise GraphError(f"its output comes from '{head}' ({by_name[head].get('class_name')}),"
                         " not a classifier layer (Dense or Conv2D); add a classification "
                         "head, e.g. GlobalAveragePooling2D then Dense(classes)")
    after_head = _descendants(head, parents, names)
    weighted = _weighted_so_far(names, parents, params)
    layers = []
    for name in names:
        layer = by_name[name]
        reason = None
        if layer.get("class_name") == "InputLayer":
            continue
        if _is_operation(layer):
            continue
        if name == head:
            reason = "it is the classifier head, replaced for the target's classes"
        elif name in after_head:
            reason = "it comes after the classifier head"
        elif calls.get(name, 1) != 1:
            reason = (f"it is called {calls[name]} times (shared between branches), so it "
                      "has no single output to mix")
        elif not weighted[name]:
            reason = "no layer with weights comes before it: source and target would agree"
        layers.append(GraphLayer(name=name, class_name=str(layer.get("class_name")),
                                 output_shape=shapes.get(name), params=params.get(name, 0),
                                 transferable=reason is None, reason=reason))
    head_config = by_name[head]["config"]
    width = next(head_config[k] for k in HEAD_WIDTH_KEYS if k in head_config)
    return NetworkGraph(kind=kind, input_shape=input_shape, layers=tuple(layers), head=head,
                        nb_outputs=int(width), params=sum(params.values()))


def _descendants(start: str, parents: dict[str, set[str]], names: list[str]) -> set[str]:
    found = {start}
    for name in names:  # graph order: parents come first
        if parents.get(name, set()) & found:
            found.add(name)
    found.discard(start)
    return found


def _weighted_so_far(names: list[str], parents: dict[str, set[str]],
                     params: Mapping[str, int]) -> dict[str, bool]:
    """Whether a layer with weights is at or before each layer."""
    weighted: dict[str, bool] = {}
    for name in names:
        weighted[name] = params.get(name, 0) > 0 or any(
            weighted.get(p, False) for p in parents.get(name, ()))
    return weighted


def format_layers(graph: NetworkGraph, *, every: bool = False) -> str:
    """`quanta layers`: one layer a line, its name first (transferable ones only unless
    `every`), then class, output shape and parameters."""
    rows = [layer for layer in graph.layers if every or layer.transferable]
    width = max((len(layer.name) for layer in rows), default=4)
    lines = []
    for layer in rows:
        shape = "?" if layer.output_shape is None else "(" + ", ".join(
            "None" if d is None else str(d) for d in layer.output_shape) + ")"
        mark = "" if layer.transferable else f"  [not transferable: {layer.reason}]"
        lines.append(f"{layer.name:<{width}}  {layer.class_name:<22} {shape:<22} "
                     f"{layer.params:>10,}{mark}")
    return "\n".join(lines)


def _snake_case(name: str) -> str:
    """Keras's `naming.to_snake_case`: the name a saved layer's weights are filed under."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def weight_counts(config: Mapping[str, Any], weights: Any) -> dict[str, int]:
    """The number of weights of each layer, by layer name, from an open `model.weights.h5`
    (an `h5py.File`): sizes from the datasets' headers, nothing read.

    Keras files a layer's weights not under its name but under its class in snake case,
    numbered in the order of `model.layers` (`batch_normalization_3`), so the names are
    matched to the config's layers (operations, which are not layers, left out) in order.
    """
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    raw = [layer for layer in inner.get("layers", []) if isinstance(layer, dict)]
    group = weights.get("layers") if hasattr(weights, "get") else None
    counts: dict[str, int] = {}
    used: dict[str, int] = {}
    for layer in raw:
        if _is_operation(layer):
            continue
        key = _snake_case(str(layer.get("class_name")))
        used[key] = used.get(key, -1) + 1
        filed = key if used[key] == 0 else f"{key}_{used[key]}"
        counts[_name(layer)] = _size(group.get(filed)) if group is not None else 0
    return counts


def _size(node: Any, depth: int = 0) -> int:
    """The elements of every dataset under an HDF5 group (headers only)."""
    if node is None or depth > 16:
        return 0
    shape = getattr(node, "shape", None)
    if shape is not None and not hasattr(node, "keys"):
        size = 1
        for n in shape:
            size *= int(n)
        return size
    return sum(_size(node[key], depth + 1) for key in node)


def read_keras_file(path: str | Path) -> NetworkGraph:
    """The network of a `.keras` file, from its config and its weights' headers: no
    TensorFlow, nothing built. A file from an untrusted client must pass
    `quanta_jobs.file_checks.check_keras` first (this reads what it bounds)."""
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            counts: dict[str, int] = {}
            if "model.weights.h5" in archive.namelist():
                with archive.open("model.weights.h5") as member, \
                        h5py.File(io.BytesIO(member.read()), "r") as weights:
                    counts = weight_counts(config, weights)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError,
            OSError) as exc:
        raise GraphError(f"not a saved Keras model (.keras): {str(exc)[:200]}") from None
    if not isinstance(config, dict):
        raise GraphError("its config.json is not a model config")
    return read_graph(config, counts)
