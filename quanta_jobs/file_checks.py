"""Checks of untrusted files (weights, saved models, datasets) before anything loads them.

Shared by the API (at upload, `quanta_jobs.upload_kinds`) and the worker (again, just before
the library loads a file, `check_spec_files`), and free of TensorFlow: h5py, zipfile
and NumPy's `.npy` header reader only. Every check reads metadata, never the data, so
a small hostile file cannot make the checker allocate what it declares.

- HDF5 (`.weights.h5`, and the `model.weights.h5` inside a `.keras`): every object is
  visited without following links. External links, soft links, datasets whose bytes
  live in other files (external storage) or are mapped from them (virtual datasets),
  object references, and datasets declaring far more bytes than the file holds are all
  refused: such a file would make a reader fetch other files of the worker's disk
  (another owner's upload, the process environment) or allocate gigabytes.
- `.keras`: only `config.json`, `metadata.json` and `model.weights.h5`, within their
  unpacked sizes; the config names only the classes the QUANTA networks use
  (`ALLOWED_CLASSES`) and no Python code, and the parameters its layers declare stay
  under `max_model_params`.
- `.npz`: the four arrays' headers give shapes and dtypes; their declared bytes, image
  sides and channels stay under the limits.
- image zips (`images:PATH.zip`): the directory (member count, unpacked bytes, inflation
  ratios, member names, the class-folder layout), then each image's header (Pillow): its
  format by content, its pixels, and the dataset's bytes decoded at the size it loads at.

Each check raises `ValueError` with a message the client can act on.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quanta_jobs.errors import Invalid
from quanta_spec.images import (
    FORMATS_TEXT,
    GREY_MODES,
    IMAGE_FORMATS,
    MAX_IMAGE_FILES,
    MAX_IMAGE_PIXELS,
    ImageZipLayout,
    image_zip_path,
    load_shape,
    read_layout,
)
from quanta_spec.keras_graph import GraphError, NetworkGraph, read_keras_file

GiB = 1024**3
MiB = 1024**2
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: Largest unpacked config.json of a .keras upload (real ones are kilobytes).
MAX_CONFIG_BYTES = 16 * MiB
#: The members a saved Keras model may hold (assets come only with layers we refuse).
KERAS_MEMBERS = frozenset({"config.json", "metadata.json", "model.weights.h5"})
#: A dataset may declare this many times the file's bytes, plus `H5_SLACK_BYTES`:
#: Keras writes weights uncompressed, so their declared size is what the file stores.
H5_EXPANSION = 2
H5_SLACK_BYTES = 1 * MiB
#: Nesting that no saved model reaches; deeper is refused rather than recursed.
MAX_CONFIG_DEPTH = 64
#: Groups and datasets an HDF5 weights file may hold: a full-width target has a few
#: hundred; walking 300,000 once cost 16 CPU-seconds of the API.
MAX_H5_OBJECTS = 10_000
#: How much a member of a `.keras` zip may inflate: Keras stores its weights uncompressed
#: and its JSON deflates a few times, while a bomb of zeros inflates a thousand times.
MAX_UNPACK_RATIO = 50
#: Members this small are never a bomb, whatever their ratio.
RATIO_FREE_BYTES = MiB


@dataclass(frozen=True)
class FileLimits:
    """The ceilings of the checks (from the service's settings, `from_settings`)."""

    max_dataset_bytes: int = 4 * GiB
    max_image_side: int = 128
    max_model_params: int = 100_000_000
    max_unpacked_bytes: int = GiB
    max_image_files: int = MAX_IMAGE_FILES
    max_image_pixels: int = MAX_IMAGE_PIXELS

    @classmethod
    def from_settings(cls, settings: Any) -> FileLimits:
        return cls(max_dataset_bytes=settings.max_dataset_bytes,
                   max_image_side=settings.max_image_side,
                   max_model_params=settings.max_model_params,
                   max_unpacked_bytes=settings.max_upload_bytes,
                   max_image_files=settings.max_image_files,
                   max_image_pixels=settings.max_image_pixels)


# -- HDF5 ----------------------------------------------------------------------------------
def check_hdf5(path: Path | Any, size: int | None = None) -> int:
    """Refuse an HDF5 file that points outside itself, declares more than it holds, or
    holds more objects or deeper nesting than any model's; returns the bytes its datasets
    declare. `path` may be an open binary file of `size` bytes (a zip member, read in
    place rather than unpacked to disk first)."""
    import h5py  # light (no TensorFlow); only file checks need it

    if size is None:
        size = Path(path).stat().st_size
    try:
        with h5py.File(path, "r") as handle:
            declared = _walk(handle, "/", set(), h5py, 0)
    except OSError as exc:
        raise ValueError(f"a damaged HDF5 file ({exc})") from exc
    if declared > H5_EXPANSION * size + H5_SLACK_BYTES:
        raise ValueError(f"its datasets declare {declared} bytes but the file holds {size}; "
                         "weights saved by Keras store what they declare")
    return declared


def _walk(group: Any, where: str, seen: set[tuple[int, int]], h5py: Any, depth: int) -> int:
    """Bytes declared below `group`, every link inspected before it is followed, groups
    nested at most MAX_CONFIG_DEPTH deep (deeper is refused, not recursed into)."""
    if depth > MAX_CONFIG_DEPTH:
        raise ValueError(f"its groups are nested deeper than {MAX_CONFIG_DEPTH} levels "
                         f"(at '{where[:200]}'); no saved model's are")
    declared = 0
    for name in group:  # link names: nothing is resolved yet
        path = f"{where.rstrip('/')}/{name}"
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise ValueError(f"'{path}' is an external link (to {link.filename}); a weights "
                             "file must hold its data itself")
        if isinstance(link, h5py.SoftLink):
            raise ValueError(f"'{path}' is a soft link (to {link.path}); a weights file holds "
                             "no links")
        if not isinstance(link, h5py.HardLink):
            raise ValueError(f"'{path}' is a link of an unknown kind")
        item = group[name]
        info = h5py.h5o.get_info(item.id)
        key = (info.fileno, info.addr)
        if key in seen:  # a second hard link to one object: counted once, never looped
            continue
        seen.add(key)
        if len(seen) > MAX_H5_OBJECTS:
            raise ValueError(f"it holds more than {MAX_H5_OBJECTS} groups and datasets; "
                             "a model's weights file holds a few hundred")
        if isinstance(item, h5py.Group):
            declared += _walk(item, path, seen, h5py, depth + 1)
        elif isinstance(item, h5py.Dataset):
            declared += _check_dataset(item, path, h5py)
    return declared


def _check_dataset(dataset: Any, path: str, h5py: Any) -> int:
    if dataset.is_virtual:
        raise ValueError(f"'{path}' is a virtual dataset (mapped from other files); a "
                         "weights file must hold its data itself")
    if dataset.id.get_create_plist().get_external_count() or dataset.external:
        raise ValueError(f"'{path}' keeps its data in external files; a weights file must "
                         "hold its data itself")
    dtype = dataset.dtype
    if h5py.check_dtype(ref=dtype) is not None or (dtype.hasobject and not (
            h5py.check_string_dtype(dtype) or h5py.check_vlen_dtype(dtype))):
        raise ValueError(f"'{path}' holds object references; weights are numbers")
    shape = dataset.shape or ()
    return math.prod(int(n) for n in shape) * max(1, dtype.itemsize)


# -- .keras ----------------------------------------------------------------------------
def read_keras_config(path: Path, limits: FileLimits) -> dict[str, Any]:
    """The config of a `.keras` file, after checking its members' names and sizes."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            if "config.json" not in names:
                raise ValueError("a zip file without config.json is not a saved Keras model; "
                                 "upload a .keras file saved with model.save")
            extra = sorted(set(names) - KERAS_MEMBERS)
            if extra or len(names) != len(set(names)):
                raise ValueError(f"it holds members a QUANTA model has not "
                                 f"({', '.join(extra[:5]) or 'duplicate names'}); expected "
                                 f"{', '.join(sorted(KERAS_MEMBERS))}")
            unpacked = sum(i.file_size for i in infos)
            if unpacked > limits.max_unpacked_bytes:
                raise ValueError(f"its members are {unpacked} bytes unpacked, over the limit of "
                                 f"{limits.max_unpacked_bytes}")
            size = archive.getinfo("config.json").file_size
            if size > MAX_CONFIG_BYTES:  # a zip bomb would fill the memory when read
                raise ValueError(f"its config.json is {size} bytes unpacked; a model's "
                                 f"config is under {MAX_CONFIG_BYTES} bytes")
            for info in infos:  # from the zip's directory: nothing is inflated yet
                if (info.file_size > RATIO_FREE_BYTES
                        and info.file_size > MAX_UNPACK_RATIO * max(1, info.compress_size)):
                    raise ValueError(f"its {info.filename} would inflate from "
                                     f"{info.compress_size} to {info.file_size} bytes, more "
                                     f"than {MAX_UNPACK_RATIO} times: a saved model's do not")
            config = json.loads(archive.read("config.json"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("its config.json is not valid JSON") from exc
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        raise ValueError("not a .keras file (not a readable zip archive); upload a file saved "
                         "with model.save('x.keras')") from exc
    if not isinstance(config, dict):
        raise ValueError("its config.json is not a model config (a JSON object)")
    return config


def check_keras(path: Path, limits: FileLimits) -> None:
    """The whole `.keras` check: members, config (classes, code, parameters), weights."""
    config = read_keras_config(path, limits)
    check_model_config(config, limits)
    _check_keras_weights(path)


def _check_keras_weights(path: Path) -> None:
    """The `model.weights.h5` inside a `.keras`, walked in place (`check_hdf5`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                return
            info = archive.getinfo("model.weights.h5")
            # Read in place: only what the walk visits is inflated, never the whole member.
            with archive.open(info) as weights:
                try:
                    check_hdf5(weights, info.file_size)
                except ValueError as exc:
                    raise ValueError(f"its model.weights.h5: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        raise ValueError("its model.weights.h5 cannot be unpacked") from exc


#: What a saved QUANTA network's config may name: (class name, module) of every object
#: with a `class_name` (layers, models, initializers, optimizer, loss, dtype policies),
#: as Keras 3 writes them for the kes2021 and compact2025 networks, sources, targets and
#: witnesses. Anything else (a preprocessing layer that reads a vocabulary file, a
#: custom class) is refused before any loader sees it.
_LAYERS = ("BatchNormalization", "Conv2D", "Dense", "Dropout", "ELU", "Flatten",
           "GlobalAveragePooling2D", "InputLayer", "MaxPooling2D", "Rescaling",
           # the optional augmentation of source training
           "RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom")
_METRICS = ("CategoricalAccuracy", "FalseNegatives", "FalsePositives", "Precision", "Recall",
            "TopKCategoricalAccuracy", "TrueNegatives", "TruePositives")
ALLOWED_CLASSES: dict[str, frozenset[str]] = {
    **{name: frozenset({"keras.layers"}) for name in _LAYERS},
    **{name: frozenset({"keras.metrics"}) for name in _METRICS},
    **{name: frozenset({"keras.initializers"}) for name in ("GlorotUniform", "Ones",
                                                            "Zeros")},
    "CategoricalCrossentropy": frozenset({"keras.losses"}),
    "Adam": frozenset({"keras.optimizers"}),
    "LossScaleOptimizer": frozenset({"keras.optimizers"}),  # mixed precision
    "DTypePolicy": frozenset({"keras"}),
    "Functional": frozenset({"keras.src.models.functional", "keras.models", "keras"}),
    "Sequential": frozenset({"keras.src.models.sequential", "keras.models", "keras"}),
    # quanta_layer: the reference's own, unregistered; its saved targets are continued.
    "QuantaLayer": frozenset({"quanta.layer", "quanta_layer"}),
    # quanta.training: where targets saved before the optimizer had its own module found it.
    "QuantaAdam": frozenset({"quanta.optimizer", "quanta.training"}),
    "__keras_tensor__": frozenset(),
}
#: The registered names of the project's own classes (`register_keras_serializable`).
QUANTA_REGISTERED = frozenset({"quanta>QuantaLayer", "quanta>QuantaAdam"})

#: Class names under which Keras serialises Python code (bytecode) in a model's config.
CODE_CLASSES = frozenset({"__lambda__", "Lambda"})


def _objects(config: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every dict of the config that names a class, outermost first."""
    if depth > MAX_CONFIG_DEPTH:
        raise ValueError("its config.json is nested deeper than any model's")
    if isinstance(config, dict):
        if "class_name" in config:
            yield config
        for value in config.values():
            yield from _objects(value, depth + 1)
    elif isinstance(config, list):
        for value in config:
            yield from _objects(value, depth + 1)


def check_model_config(config: dict[str, Any], limits: FileLimits) -> None:
    """Only the QUANTA networks' classes, no code, at most `max_model_params` declared."""
    for item in _objects(config):
        name = item.get("class_name")
        if name in CODE_CLASSES:
            raise ValueError("it holds Python code (a Lambda layer or a lambda function), "
                             "which the service never loads; rebuild the model without "
                             "Lambda layers")
        module = item.get("module")
        allowed = ALLOWED_CLASSES.get(str(name))
        registered = item.get("registered_name")
        if registered not in (None, name) and registered not in QUANTA_REGISTERED:
            allowed = None
        if allowed is None or (module is not None and module not in allowed):
            where = f" from {module}" if module else ""
            raise ValueError(f"it uses the class '{str(name)[:80]}'{where[:120]}, which the "
                             "QUANTA networks do not; only models saved by this service's "
                             "jobs (or by `quanta`) are accepted")
    params = declared_parameters(config)
    if params > limits.max_model_params:
        raise ValueError(f"its layers declare {params} parameters, over the limit of "
                         f"{limits.max_model_params} (QUANTA_MAX_MODEL_PARAMS)")


#: Keras's own classes a user's network (`source_model`) may name, by module: every
#: built-in layer and the operations Keras saves among them (`x + y` on tensors), with the
#: initializers, regularizers, constraints, optimizers, losses, metrics and dtype policies
#: a compiled model's config holds.
NETWORK_MODULES = frozenset({
    "keras", "keras.layers", "keras.models", "keras.src.models.functional",
    "keras.src.models.sequential", "keras.initializers", "keras.regularizers",
    "keras.constraints", "keras.optimizers", "keras.optimizers.schedules", "keras.losses",
    "keras.metrics", "keras.activations", "keras.src.ops.numpy", "keras.src.ops.nn",
    "keras.src.ops.core", "keras.src.ops.math", "keras.src.ops.image",
})
#: Built-in layers a network from a client may still not use: they read files of the
#: worker (vocabularies, SavedModels) or wrap code of another framework.
NETWORK_REFUSED = frozenset({
    "TextVectorization", "StringLookup", "IntegerLookup", "TFSMLayer", "TorchModuleWrapper",
    "JaxLayer", "FlaxLayer",
})


def check_network_config(config: dict[str, Any]) -> None:
    """A user's network: Keras's own classes only (`NETWORK_MODULES`), no code, no custom
    object, no layer that reads files (`NETWORK_REFUSED`); this project's classes too (a
    saved target may be the source of another study)."""
    items = list(_objects(config))
    for item in items:  # what is never loaded, said first wherever it sits
        name = str(item.get("class_name"))
        if name in CODE_CLASSES:
            raise ValueError("it holds Python code (a Lambda layer or a lambda function), "
                             "which the service never loads; rebuild the model without "
                             "Lambda layers")
        if name in NETWORK_REFUSED:
            raise ValueError(f"it uses {name}, a layer that reads files or runs another "
                             "framework's code; the service refuses it")
    for item in items:
        name = str(item.get("class_name"))
        module = item.get("module")
        registered = item.get("registered_name")
        ours = registered in QUANTA_REGISTERED and module in ALLOWED_CLASSES.get(name, ())
        if name == "__keras_tensor__" or ours:
            continue
        if registered not in (None, name) or module not in NETWORK_MODULES:
            where = f" from {module}" if module else ""
            raise ValueError(f"it uses the class '{name[:80]}'{where[:120]}, which is not one "
                             "of Keras's own; custom objects are not loaded by the service "
                             "(rebuild the model from keras.layers)")


def check_network(path: Path, limits: FileLimits) -> NetworkGraph:
    """The whole check of a user's network (`source_model`): members and sizes as for any
    `.keras`, the classes it names (`check_network_config`), its weights file, then its
    graph (functional or Sequential, one image input, a classifier head) and its
    parameters (from the weights' headers) under `max_model_params`."""
    config = read_keras_config(path, limits)
    check_network_config(config)
    params = declared_parameters(config)  # what building the layers would allocate
    if params > limits.max_model_params:
        raise ValueError(f"its layers declare {params} parameters, over the limit of "
                         f"{limits.max_model_params} (QUANTA_MAX_MODEL_PARAMS)")
    _check_keras_weights(path)
    try:
        graph = read_keras_file(path)
    except GraphError as exc:
        raise ValueError(str(exc)) from None
    if graph.params > limits.max_model_params:
        raise ValueError(f"it has {graph.params} parameters, over the limit of "
                         f"{limits.max_model_params} (QUANTA_MAX_MODEL_PARAMS)")
    return graph


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"its config gives {what} as {str(value)[:40]}; expected a "
                         "non-negative integer")
    return value


def _input_depth(layer: dict[str, Any]) -> int:
    """The last input dimension a layer was built with (1 if the config does not say)."""
    build = layer.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if isinstance(shape, list) and shape and shape[-1] is not None:
        return _int(shape[-1], "an input shape")
    return 1


def _kernel_area(inner: dict[str, Any]) -> int:
    kernel = inner.get("kernel_size", [1, 1])
    kernel = kernel if isinstance(kernel, list) else [kernel, kernel]
    return math.prod(_int(k, "a kernel size") for k in kernel)


def declared_parameters(config: dict[str, Any]) -> int:
    """The weights the config's layers with the largest weights declare (Dense, the
    convolutions, Embedding, the normalizations; from units, filters, kernel sizes and
    built input shapes), before anything is built: what Keras would allocate loading it."""
    total = 0
    for item in _objects(config):
        inner = item.get("config")
        if not isinstance(inner, dict):
            continue
        name = item.get("class_name")
        if name == "Dense":
            units = _int(inner.get("units"), "units")
            total += (_input_depth(item) + 1) * units
        elif name in ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                      "Conv3DTranspose", "SeparableConv1D", "SeparableConv2D"):
            filters = _int(inner.get("filters"), "filters")
            area = _kernel_area(inner)
            depth = _input_depth(item)
            if name.startswith("Separable"):
                multiplier = _int(inner.get("depth_multiplier", 1), "depth_multiplier")
                total += area * depth * multiplier + depth * multiplier * filters + filters
            else:
                total += (area * depth + 1) * filters
        elif name in ("DepthwiseConv1D", "DepthwiseConv2D"):
            multiplier = _int(inner.get("depth_multiplier", 1), "depth_multiplier")
            total += (_kernel_area(inner) + 1) * _input_depth(item) * multiplier
        elif name == "Embedding":
            total += _int(inner.get("input_dim"), "input_dim") * _int(inner.get("output_dim"),
                                                                       "output_dim")
        elif name in ("BatchNormalization", "LayerNormalization", "GroupNormalization"):
            total += 4 * _input_depth(item)
    return total


# -- .npz ------------------------------------------------------------------------------
def npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy member's header (parsed with NumPy's safe literal
    reader): nothing is unpickled, and no array is read."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"{member} uses .npy format {version}; save it with numpy.savez")
    return tuple(shape), dtype


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The four arrays' shapes and dtypes, from their headers alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()
                       if n.endswith(".npy")}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise ValueError(f"it has no key {', '.join(missing)} "
                                 f"(it has: {', '.join(sorted(members)) or 'nothing'})")
            return {k: npy_header(archive, members[k]) for k in NPZ_KEYS}
    except ValueError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
            zlib.error, SyntaxError) as exc:
        with open(path, "rb") as handle:
            single = handle.read(6) == b"\x93NUMPY"
        if single:
            raise ValueError("a single .npy array, not an .npz archive; save it with "
                             "numpy.savez") from exc
        raise ValueError("not a readable .npz archive; save it with numpy.savez") from exc


def check_npz(path: Path, limits: FileLimits) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The structural checks of `quanta.datasets`, and the size limits, from the headers;
    returns them (the train split's length sizes a job)."""
    headers = npz_headers(path)
    declared = 0
    for split in ("train", "test"):
        (x_shape, x_dtype), (y_shape, y_dtype) = headers[f"x_{split}"], headers[f"y_{split}"]
        if x_dtype.kind not in "iuf" or len(x_shape) not in (3, 4) or x_shape[0] < 1:
            raise ValueError(f"x_{split} has dtype {x_dtype} and shape {x_shape}; expected "
                             "numeric (N, H, W) or (N, H, W, C) images")
        if len(y_shape) == 2 and y_shape[1] == 1:
            y_shape = y_shape[:1]
        if y_dtype.kind not in "iu" or len(y_shape) != 1:
            raise ValueError(f"y_{split} has dtype {y_dtype} and shape {y_shape}; expected "
                             "integer labels of shape (N,)")
        if y_shape[0] != x_shape[0]:
            raise ValueError(f"y_{split} has {y_shape[0]} labels but x_{split} has "
                             f"{x_shape[0]} images")
        side = max(x_shape[1:3])
        if side > limits.max_image_side:
            raise ValueError(f"x_{split} has images of {x_shape[1]}x{x_shape[2]} pixels; the "
                             f"limit is {limits.max_image_side} a side "
                             "(QUANTA_MAX_IMAGE_SIDE)")
        if len(x_shape) == 4 and not 1 <= x_shape[3] <= 4:
            raise ValueError(f"x_{split} has {x_shape[3]} channels; expected 1 to 4")
        declared += math.prod(x_shape) * x_dtype.itemsize
        declared += math.prod(y_shape) * y_dtype.itemsize
    if declared > limits.max_dataset_bytes:
        raise ValueError(f"its arrays declare {declared} bytes, over the limit of "
                         f"{limits.max_dataset_bytes} (QUANTA_MAX_DATASET_BYTES)")
    return headers


# -- image zips (images:PATH.zip) ---------------------------------------------------------
# A zip of class folders (`quanta_spec.images` reads its layout, the library's loader
# too). Its directory is checked first, before anything is inflated: the member count
# (from the central directory's records, before zipfile builds one object per member),
# unpacked bytes, each member's inflation ratio, its name (no path out of the folder, no
# link, no duplicate) and the layout. Then each image's header alone, with Pillow (its
# pixels are never decoded here): a known format by content, its pixels, and what the
# whole dataset takes decoded at the size it will be loaded.
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL_HEADER = b"PK\x01\x02"


@dataclass(frozen=True)
class ImageZipSummary:
    """What an image zip holds, from its directory and its images' headers."""

    classes: int
    train: int
    test: int
    shape: tuple[int, int, int]  # (H, W, C) as loaded
    held_out: bool


def zip_member_count(path: Path, stop_after: int) -> int:
    """The members a zip's central directory lists, counted record by record where
    zipfile would read them (nothing is kept), stopping once past `stop_after`: a
    1 GiB directory of empty members would otherwise become millions of objects."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        tail_size = min(size, 22 + 0xFFFF)
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
        at = tail_size - 22
        if at < 0 or tail[at:at + 4] != _EOCD or tail[-2:] != b"\0\0":
            at = tail.rfind(_EOCD)  # the record has a comment after it
        if at < 0 or tail_size - at < 22:
            raise ValueError("not a zip archive (it has no end-of-directory record)")
        eocd = size - tail_size + at
        directory_size = int.from_bytes(tail[at + 12:at + 16], "little")
        end = eocd
        if eocd >= 76:  # a Zip64 end record and its locator come just before
            handle.seek(eocd - 76)
            record = handle.read(76)
            if record[56:60] == _ZIP64_LOCATOR and record[:4] == _ZIP64_EOCD:
                directory_size = int.from_bytes(record[40:48], "little")
                end = eocd - 76
        start = end - directory_size
        if start < 0:
            raise ValueError("not a readable zip archive (its directory lies outside it)")
        handle.seek(start)
        count = read = 0
        while read < directory_size and count <= stop_after:
            header = handle.read(46)
            if len(header) < 46 or header[:4] != _CENTRAL_HEADER:
                raise ValueError("not a readable zip archive (its directory is damaged)")
            variable = sum(int.from_bytes(header[i:i + 2], "little") for i in (28, 30, 32))
            handle.seek(variable, 1)
            read += 46 + variable
            count += 1
    return count


def _image_zip_directory(archive: zipfile.ZipFile, limits: FileLimits) -> ImageZipLayout:
    """The checks of an image zip's directory (after `zip_member_count`), then its layout."""
    infos = archive.infolist()
    if len(infos) > limits.max_image_files:
        raise ValueError(f"it holds {len(infos)} members, over the limit of "
                         f"{limits.max_image_files} (QUANTA_MAX_IMAGE_FILES)")
    unpacked = sum(info.file_size for info in infos)
    if unpacked > limits.max_unpacked_bytes:
        raise ValueError(f"its members are {unpacked} bytes unpacked, over the limit of "
                         f"{limits.max_unpacked_bytes} (QUANTA_MAX_UPLOAD_BYTES)")
    for info in infos:
        if (info.file_size > RATIO_FREE_BYTES
                and info.file_size > MAX_UNPACK_RATIO * max(1, info.compress_size)):
            raise ValueError(f"its member '{info.filename[:200]}' would inflate from "
                             f"{info.compress_size} to {info.file_size} bytes, more than "
                             f"{MAX_UNPACK_RATIO} times: a zip bomb, not images (which are "
                             "compressed already)")
        if info.flag_bits & 0x1:
            raise ValueError(f"its member '{info.filename[:200]}' is encrypted; zip the "
                             "images without a password")
    return read_layout(infos)


def image_zip_layout(path: Path, limits: FileLimits) -> ImageZipLayout:
    """The layout of an image zip, from its directory alone (counted, sized and named
    within `limits`); nothing is inflated."""
    try:
        count = zip_member_count(path, limits.max_image_files)
        if count > limits.max_image_files:
            raise ValueError(f"it holds more than {limits.max_image_files} members "
                             "(QUANTA_MAX_IMAGE_FILES); split the dataset, or ask for a "
                             "higher limit")
        with zipfile.ZipFile(path) as archive:
            return _image_zip_directory(archive, limits)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        raise ValueError("not a readable zip archive; zip the class folders with any zip "
                         "tool") from exc


def check_image_zip(path: Path, limits: FileLimits,
                    image_shape: tuple[int, int, int] | None = None) -> ImageZipSummary:
    """The whole check of an image zip, its directory first, then each image's header
    (Pillow, the pixels never decoded); `image_shape` (H, W, C) is the size it will be
    loaded at, None for the images' own (which must then be one)."""
    from PIL import Image  # only image zips need Pillow

    # Pillow refuses, from the header, an image of more than twice its own limit: raised
    # to ours if lower, so that it never refuses (here or in the loader of this process)
    # an image this check accepts; never lowered (other code of the process uses Pillow).
    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, limits.max_image_pixels)
    layout = image_zip_layout(path, limits)
    sizes: dict[tuple[int, int], str] = {}
    grey = True
    pixels = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for name, _ in layout.members:
                try:
                    with (archive.open(name) as handle,
                          Image.open(handle, formats=IMAGE_FORMATS) as image):
                        (width, height), mode = image.size, image.mode
                except Image.DecompressionBombError as exc:
                    raise ValueError(f"its image '{name[:200]}' declares more than "
                                     f"{limits.max_image_pixels} pixels, the limit "
                                     "(QUANTA_MAX_IMAGE_PIXELS): a decompression bomb, or an "
                                     "image to shrink before zipping") from exc
                except (zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
                    raise ValueError(f"its member '{name[:200]}' cannot be unpacked "
                                     f"({exc})") from exc
                except Exception as exc:  # whatever the parsers say: not a usable image
                    raise ValueError(f"its member '{name[:200]}' is not a "
                                     f"{FORMATS_TEXT} image (by its content); "
                                     "take it out of the class folders") from exc
                if width * height > limits.max_image_pixels:
                    raise ValueError(f"its image '{name[:200]}' is {width}x{height} = "
                                     f"{width * height} pixels, over the limit of "
                                     f"{limits.max_image_pixels} (QUANTA_MAX_IMAGE_PIXELS): a "
                                     "decompression bomb, or an image to shrink before "
                                     "zipping")
                sizes.setdefault((width, height), name)
                grey = grey and mode in GREY_MODES
                pixels += width * height
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise ValueError("not a readable zip archive; zip the class folders with any zip "
                         "tool") from exc
    height, width, channels = load_shape(sizes, grey, image_shape)
    if max(height, width) > limits.max_image_side:
        raise ValueError(f"its images would be loaded at {height}x{width} pixels; the limit "
                         f"is {limits.max_image_side} a side (QUANTA_MAX_IMAGE_SIDE)")
    count = len(layout.members)
    decoded = count * (height * width * channels + np.dtype(np.int64).itemsize)
    if decoded > limits.max_dataset_bytes:
        raise ValueError(f"its {count} images take {decoded} bytes decoded at "
                         f"{height}x{width}x{channels}, over the limit of "
                         f"{limits.max_dataset_bytes} (QUANTA_MAX_DATASET_BYTES)")
    if pixels * channels > limits.max_dataset_bytes:  # decoded at their own sizes first
        raise ValueError(f"its {count} images take {pixels * channels} bytes decoded at their "
                         f"own sizes, over the limit of {limits.max_dataset_bytes} "
                         "(QUANTA_MAX_DATASET_BYTES)")
    return ImageZipSummary(len(layout.classes), len(layout.train), len(layout.test),
                           (height, width, channels), layout.held_out)


def image_zip_train_size(path: Path, limits: FileLimits | None = None) -> int:
    """The images of the training split (the held-out share taken out), from the
    directory alone: what a job trains on, for its quota."""
    return len(image_zip_layout(path, limits or FileLimits()).train)


# -- a job's files, in the worker ------------------------------------------------------------
def check_spec_files(spec: Any, limits: FileLimits) -> None:
    """Check again, just before the library loads them, every file a local spec names:
    the worker trusts neither the upload check (a file may have changed, or come from
    an older service) nor an artifact of another job. Raises `Invalid` naming the field
    (the worker fails the job with its message)."""
    for field in ("source_task", "target_task"):
        task = getattr(spec, field, None)
        if isinstance(task, str) and task.startswith("npz:"):
            _named(field, lambda p: check_npz(p, limits), Path(task[len("npz:"):]))
        zipped = image_zip_path(task) if isinstance(task, str) else None
        if zipped is not None:  # loaded at the images' own size (no spec field gives one)
            _named(field, lambda p: check_image_zip(p, limits), Path(zipped))
    weights = getattr(spec, "source_weights", None)
    if weights:
        _named("source_weights", check_hdf5, Path(weights))
    network = getattr(spec, "source_model", None)
    if network and network.endswith(".keras"):
        _named("source_model", lambda p: check_network(p, limits), Path(network))
    previous = getattr(spec, "train_from_previous_training", None)
    if previous:
        _named("train_from_previous_training", lambda p: check_keras(p, limits),
               Path(previous))


def _named(field: str, check: Any, path: Path) -> None:
    try:
        check(path)
    except ValueError as exc:
        raise Invalid(f"{field} ({path.name}) is refused: {exc}", loc=("spec", field)) from exc
