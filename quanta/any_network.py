"""QUANTA on the researcher's own network: any Keras functional or Sequential classifier.

The built-in networks (`quanta.models`) are written layer by layer. A network the user
brings (`source_model`: a `.keras` file or a `keras.applications` architecture) is
rewired instead, from its own graph, by `keras.models.clone_model`:

- the frozen source is cut at the deepest named layer (`source_cut`): only the layers
  the QUANTA layers need are computed, never the whole source;
- the target is the same architecture, its layers new (from their configs) or, with
  `init_from_source`, starting from the source's weights; its classifier head (the last
  layer with weights, `quanta_spec.keras_graph`) is rebuilt for the target's classes;
- at each named layer the target's output `Z_T` is replaced by `λ_s·Z_S + λ_t·Z_T`.

Where the mix happens. The paper mixes pre-activations: `f(λ_s·Z_S + λ_t·Z_T)` with
`Z` the output of a Conv2D or Dense before its ELU. A named layer with a fused non-linear
activation (`Conv2D(activation="relu")`) is therefore split, in source and target alike,
into its linear part and that activation, and the QUANTA layer mixes between the two
(`split`): the paper's case. A layer without a fused activation (a linear Conv2D, a
BatchNormalization, an Add, an Activation) is mixed at its output, which is the point
the user named. `mixing_points` says which case each named layer is.

The frozen source runs as the built-in networks' does: BatchNormalization in inference
(the source is not trainable), Dropout following the target's training mode unless
`source_inference_mode` removes it from the cut.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import tree

from quanta.datasets import Dataset
from quanta.errors import QuantaError
from quanta.image_folders import fit_images
from quanta.layer import DEFAULT_INITIAL_WEIGHTS, QuantaLayer
from quanta.models import augmentation
from quanta_spec.keras_graph import GraphError, NetworkGraph, read_graph, read_keras_file
from quanta_spec.lru import LRU
from quanta_spec.source_models import (
    APPLICATION_PREFIX,
    MAX_LAYERS_AT_ONCE,
    application_name,
    model_label,
    preprocess_module,
)

#: Layers left out of a source cut run in inference mode (`source_inference_mode`).
DROPOUT_LAYERS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                  "GaussianDropout", "GaussianNoise", "AlphaDropout")


# -- loading -----------------------------------------------------------------------------
def load_network(ref: str | Path) -> keras.Model:
    """The user's source network: a `.keras` file (loaded in safe mode: no code runs) or
    `keras.applications.NAME` with its ImageNet weights from the Keras cache."""
    text = str(ref)
    if text.startswith(APPLICATION_PREFIX):
        return _application(application_name(text))
    path = Path(text)
    if not path.is_file():
        raise QuantaError(f"source model '{path}' does not exist")
    graph_of_file(path)  # a subclassed or headless network: one line, before Keras tries
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise QuantaError(f"cannot load source model '{path.name}': "
                          f"{str(exc).splitlines()[0][:300]}") from None
    return model


def _application(name: str) -> keras.Model:
    """`keras.applications.NAME` with ImageNet weights, only from the Keras cache: a
    missing file is a clear message, never a download."""
    builder = getattr(keras.applications, name, None)
    if builder is None or not callable(builder) or not name[:1].isupper():
        raise QuantaError(f"keras.applications has no network '{name}' (e.g. MobileNetV2, "
                          "ResNet50, EfficientNetB0)")
    from keras.src.utils import file_utils

    original = file_utils.urlretrieve

    def refuse(url: str, *_: Any, **__: Any) -> None:
        raise QuantaError(
            f"the ImageNet weights of keras.applications.{name} are not in the Keras cache "
            f"({_keras_cache()}); fetch them once where the network allows (python -c "
            f"\"import keras; keras.applications.{name}()\"), or give a .keras file")

    file_utils.urlretrieve = refuse
    try:
        return builder(weights="imagenet")
    except QuantaError:
        raise
    except Exception as exc:
        raise QuantaError(f"cannot build keras.applications.{name}: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    finally:
        file_utils.urlretrieve = original


def application_graph(ref: str) -> NetworkGraph:
    """The graph of `keras.applications.NAME`, built without its weights (nothing is
    downloaded): its layers and shapes are the same with them."""
    name = application_name(ref)
    builder = getattr(keras.applications, name, None)
    if builder is None or not name[:1].isupper():
        raise QuantaError(f"keras.applications has no network '{name}'")
    return graph_of(builder(weights=None))


def _keras_cache() -> Path:
    """Where Keras keeps downloaded weights: `models/` under its home ($KERAS_HOME)."""
    from keras.src.backend import config

    return Path(config.keras_home()) / "models"


def graph_of_file(path: str | Path) -> NetworkGraph:
    """The graph of a `.keras` file (`quanta_spec.keras_graph.read_keras_file`)."""
    try:
        return read_keras_file(path)
    except GraphError as exc:
        raise QuantaError(f"source model '{Path(path).name}': {exc}") from None


def graph_of(model: keras.Model) -> NetworkGraph:
    """The graph of a built model (the same rule as `graph_of_file`)."""
    try:
        # Through JSON, so that it reads exactly what a saved file would hold.
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
        counts = {layer.name: int(layer.count_params()) for layer in model.layers}
        return read_graph(config, counts)
    except GraphError as exc:
        raise QuantaError(f"source model '{model.name}': {exc}") from None


def as_functional(model: keras.Model) -> keras.Model:
    """A Sequential model as the functional model of the same layers (shared weights)."""
    if not isinstance(model, keras.Sequential):
        return model
    inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype,
                         name="images")
    x = inputs
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


# -- where to mix ------------------------------------------------------------------------
def _fused_activation(layer: keras.layers.Layer) -> Any:
    """The non-linear activation fused into `layer`, or None."""
    config = layer.get_config()
    activation = config.get("activation")
    if activation in (None, "linear") or "activation" not in config \
            or isinstance(layer, keras.layers.Activation | keras.layers.ELU
                          | keras.layers.ReLU | keras.layers.LeakyReLU | keras.layers.Softmax):
        return None
    return activation


def mixing_points(model: keras.Model, names: Sequence[str]) -> dict[str, str]:
    """For each named layer, where its QUANTA layer mixes: `pre-activation` (a fused
    activation split off, the paper's case) or `output`."""
    return {name: "pre-activation" if _fused_activation(model.get_layer(name)) is not None
            else "output" for name in names}


def _linear_twin(layer: keras.layers.Layer) -> keras.layers.Layer:
    """`layer` without its fused activation (same name, same weights shapes)."""
    return layer.__class__.from_config({**layer.get_config(), "activation": "linear"})


# -- the frozen source -------------------------------------------------------------------
def source_cut(source: keras.Model, names: Sequence[str], *, inference: bool = False,
               input_dtype: str | None = None) -> keras.Model:
    """The frozen part of `source` that yields its outputs (pre-activations where split)
    at `names`: a model ending at the deepest of them.

    It calls the source's own layers (its weights, shared); a split layer is a linear
    copy holding the same weights. `inference` leaves out Dropout and noise layers.
    """
    functional = as_functional(source)
    wanted = set(names)
    twins: dict[int, keras.layers.Layer] = {}
    found: dict[str, Any] = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if inference and layer.__class__.__name__ in DROPOUT_LAYERS:
            return keras.layers.Identity(name=layer.name)
        if layer.name in wanted and _fused_activation(layer) is not None:
            if id(layer) not in twins:
                twins[id(layer)] = _linear_twin(layer)
            return twins[id(layer)]
        return layer

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        outputs = layer(*args, **kwargs)
        if layer.name in wanted:
            found[layer.name] = outputs
            original = functional.get_layer(layer.name)
            if layer is not original:  # a twin: load the weights, then apply the activation
                layer.set_weights(original.get_weights())
                activation = _fused_activation(original)
                if activation is not None:
                    return keras.layers.Activation(activation,
                                                   name=f"{layer.name}_activation")(outputs)
        return outputs

    images = keras.Input(shape=functional.inputs[0].shape[1:],
                         dtype=input_dtype or functional.inputs[0].dtype, name="images")
    keras.models.clone_model(functional, input_tensors=images, clone_function=clone,
                             call_function=call)
    missing = [n for n in names if n not in found]
    if missing:
        raise QuantaError(f"source model has no layer {missing[0]!r}")
    cut = keras.Model(images, [found[n] for n in names], name="source_trunk")
    cut.trainable = False
    return cut


# -- target and witness -----------------------------------------------------------------
def build_target(
    source: keras.Model,
    graph: NetworkGraph,
    nb_classes: int,
    names: Sequence[str] = (),
    *,
    init_from_source: bool = False,
    augment: bool = False,
    source_inference: bool = False,
    initial_weights: Sequence[float] = DEFAULT_INITIAL_WEIGHTS,
    name: str = "target",
) -> keras.Model:
    """The target (with `names`) or a witness (no `names`): `source`'s architecture with
    its head rebuilt for `nb_classes`, new weights (from the caller's seeded stream) or,
    with `init_from_source`, the source's; a QUANTA layer at each of `names`."""
    functional = as_functional(source)
    names = tuple(names)
    graph.check_layers(names)
    input_dtype = functional.inputs[0].dtype
    images = keras.Input(shape=functional.inputs[0].shape[1:], dtype=input_dtype,
                         name="images")
    features: dict[str, Any] = {}
    if names:
        cut = source_cut(source, names, inference=source_inference, input_dtype=input_dtype)
        outputs = cut(images)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        features = dict(zip(names, outputs, strict=True))
    start = augmentation()(images) if augment else images
    clones: dict[int, keras.layers.Layer] = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) in clones:  # a shared layer stays shared
            return clones[id(layer)]
        # A frozen source's layers say trainable: false; the target's train.
        config = layer.get_config()
        if isinstance(layer, keras.layers.Layer):
            config["trainable"] = True
        if layer.name == graph.head:
            key = "units" if "units" in config else "filters"
            config = {**config, key: nb_classes}
        elif layer.name in features and _fused_activation(layer) is not None:
            config = {**config, "activation": "linear"}
        try:
            new = layer.__class__.from_config(config)
        except Exception as exc:
            raise QuantaError(f"layer '{layer.name}' ({layer.__class__.__name__}) cannot be "
                              f"rebuilt from its config: {str(exc)[:200]}") from None
        clones[id(layer)] = new
        return new

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        args = tree.map_structure(lambda t: start if t is images else t, args)
        outputs = layer(*args, **kwargs)
        if layer.name in features:
            original = functional.get_layer(layer.name)
            activation = _fused_activation(original) or "linear"
            outputs = QuantaLayer(transferred_layer=layer.name,
                                  initial_weights=initial_weights, activation=activation,
                                  name=f"quanta_{layer.name}")([features[layer.name], outputs])
        return outputs

    cloned = keras.models.clone_model(functional, input_tensors=images,
                                      clone_function=clone, call_function=call)
    model = keras.Model(images, cloned.outputs, name=name)
    _copy_weights(functional, model, graph.head, every=init_from_source)
    return model


def _copy_weights(source: keras.Model, model: keras.Model, head: str, *, every: bool) -> None:
    """The source's weights into `model`'s layers of the same name: every layer but the
    head with `every`; otherwise only preprocessing state (layers whose weights are all
    non-trainable and that are not BatchNormalization, e.g. `Normalization`'s mean)."""
    for layer in source.layers:
        if layer.name == head or not layer.weights:
            continue
        try:
            twin = model.get_layer(layer.name)
        except ValueError:
            continue
        if twin is layer or not twin.weights:
            continue
        preprocessing = (not layer.trainable_weights
                         and not isinstance(layer, keras.layers.BatchNormalization))
        if every or preprocessing:
            twin.set_weights(layer.get_weights())


def freeze(model: keras.Model) -> keras.Model:
    model.trainable = False
    return model


def resolve_layers(graph: NetworkGraph, wanted: str | int | Sequence[str]) -> tuple[str, ...]:
    """The named layers of a spec in graph order: a name, several, or a negative number
    for every transferable layer."""
    if isinstance(wanted, int):
        if wanted >= 0:
            raise QuantaError(f"layer {wanted}: a network that is not built in takes layer "
                              "names (list them with `quanta layers MODEL`), or -1 for all")
        return graph.transferable
    names = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    try:
        return graph.in_graph_order(names)
    except GraphError as exc:
        raise QuantaError(str(exc)) from None


def default_preprocess(source_model: str) -> str:
    """A `keras.applications` network's own preprocessing function (read off the module
    that defines it); `none` for a file, whose own layers prepare the pixels."""
    if not str(source_model).startswith(APPLICATION_PREFIX):
        return "none"
    builder = getattr(keras.applications, application_name(str(source_model)), None)
    module = getattr(builder, "__module__", "").rsplit(".", 1)[-1]
    return f"{APPLICATION_PREFIX}{module}.preprocess_input" if module else "none"


def preprocess_function(name: str) -> Callable[[Any], Any]:
    """The function `preprocess` names, applied to float32 pixels (0-255)."""
    if name == "none":
        return lambda x: x
    if name == "rescale":
        return lambda x: x / 255.0
    module = preprocess_module(name)
    function = getattr(getattr(keras.applications, module or "", None), "preprocess_input",
                       None)
    if function is None:
        raise QuantaError(f"preprocess '{name}': keras.applications has no such module")
    return function


# -- one experiment's source network -------------------------------------------------------
@dataclass
class OwnSource:
    """A user's source network as one experiment uses it: the frozen model, its graph,
    the layers measured, and how images are prepared for it."""

    ref: str
    model: keras.Model
    graph: NetworkGraph
    preprocess: str
    resize_method: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = (int(d) if d is not None else 0 for d in self.graph.input_shape)
        if not (h and w and c):
            raise QuantaError(f"source model '{model_label(self.ref)}' takes images of any "
                              "size; give it a fixed input (keras.Input(shape=(H, W, C)))")
        return h, w, c

    def layers(self, wanted: str | int | Sequence[str]) -> tuple[str, ...]:
        names = resolve_layers(self.graph, wanted)
        if len(names) > MAX_LAYERS_AT_ONCE:
            raise QuantaError(f"the network has {len(names)} transferable layers; QUANTA "
                              f"mixes at most {MAX_LAYERS_AT_ONCE} at once: name them")
        return names

    def prepare(self, data: Dataset) -> Dataset | Prepared:
        """`data` at the network's input (`fit_images`) and through `preprocess`."""
        shape = self.input_shape
        x_train = fit_images(data.x_train, shape, self.resize_method)
        x_test = fit_images(data.x_test, shape, self.resize_method)
        if self.preprocess == "none" and self.model.inputs[0].dtype == "uint8":
            return Prepared(data.name, x_train, data.y_train, x_test, data.y_test,
                            data.nb_classes)
        function = preprocess_function(self.preprocess)
        return Prepared(data.name, _prepared(x_train, function), data.y_train,
                        _prepared(x_test, function), data.y_test, data.nb_classes)

    def describe(self, names: Sequence[str]) -> dict[str, Any]:
        """What `network.json` records: enough to tell how the numbers were made."""
        return {"source_model": model_label(self.ref), "kind": self.graph.kind,
                "input_shape": list(self.input_shape), "head": self.graph.head,
                "preprocess": self.preprocess, "resize_method": self.resize_method,
                "layers": mixing_points(as_functional(self.model), names)}


@dataclass(frozen=True)
class Prepared:
    """A task's arrays as a user's network takes them (float32 after `preprocess`)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    nb_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def _prepared(x: np.ndarray, function: Callable[[Any], Any], chunk: int = 1024
              ) -> np.ndarray:
    """float32 pixels through `function`, a chunk at a time (one float copy in memory)."""
    out = np.empty(x.shape, np.float32)
    for start in range(0, len(x), chunk):
        out[start:start + chunk] = np.asarray(
            function(x[start:start + chunk].astype(np.float32)), np.float32)
    return out


#: Frozen user networks by (file content or application name): every run and layer of
#: a study in a worker shares one.
OWN_SOURCES: LRU[Hashable, tuple[keras.Model, NetworkGraph]] = LRU(size=2)


def own_source(ref: str, preprocess: str | None, resize_method: str) -> OwnSource:
    """The frozen, compiled user network `ref` (loaded once per process and file)."""
    from quanta import training
    from quanta.sources import file_key

    key: Hashable = ref if ref.startswith(APPLICATION_PREFIX) else file_key(Path(ref))

    def load() -> tuple[keras.Model, NetworkGraph]:
        model = load_network(ref)
        graph = graph_of(model)
        freeze(model)
        return training.compile_model(model), graph

    model, graph = OWN_SOURCES.get(key, load)
    return OwnSource(ref, model, graph, preprocess or default_preprocess(ref), resize_method)
