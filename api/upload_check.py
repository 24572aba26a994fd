"""Recognise and check an uploaded file's kind from its content, never from its name alone.

This runs in the API process, which must not import TensorFlow or `quanta`, so the
checks use h5py, zipfile and numpy; the worker re-checks datasets fully with
`quanta.datasets` when it loads them.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from quanta_spec.layout import SOURCE_FILE_NAMES

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: HDF5 allows a user block before the superblock; it then starts at one of these offsets.
HDF5_OFFSETS = (0, 512, 1024, 2048)
KINDS = ("weights", "model", "dataset")
SUFFIX_KIND = {".h5": "weights", ".hdf5": "weights", ".keras": "model", ".npz": "dataset"}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: Largest unpacked config.json of a .keras upload (real ones are kilobytes).
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def is_hdf5(head: bytes) -> bool:
    return any(head[o: o + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE for o in HDF5_OFFSETS)


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def sniff_kind(path: Path, head: bytes, filename: str) -> str | None:
    """The kind the content says, else the kind the file name says, else None."""
    if is_hdf5(head):
        return "weights"
    if head.startswith(b"PK"):
        names = _zip_names(path) or []
        if "config.json" in names:
            return "model"
        if any(n.endswith(".npy") for n in names):
            return "dataset"
    return SUFFIX_KIND.get(Path(filename.lower()).suffix)


def check_weights(path: Path, head: bytes) -> None:
    if not is_hdf5(head):
        raise ValueError("not an HDF5 file (no HDF5 signature); upload a .weights.h5 file "
                         "saved with model.save_weights")
    import h5py  # light (no TensorFlow); imported here because only uploads need it

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        raise ValueError(f"a damaged HDF5 file ({exc})") from exc


def check_model(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise ValueError("a zip file without config.json is not a saved Keras model; "
                                 "upload a .keras file saved with model.save")
            size = archive.getinfo("config.json").file_size
            if size > MAX_CONFIG_BYTES:  # a zip bomb would fill the memory when read
                raise ValueError(f"its config.json is {size} bytes unpacked; a model's "
                                 f"config is under {MAX_CONFIG_BYTES} bytes")
            config = json.loads(archive.read("config.json"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("its config.json is not valid JSON") from exc
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        raise ValueError("not a .keras file (not a readable zip archive); upload a file saved "
                         "with model.save('x.keras')") from exc
    if _holds_code(config):
        raise ValueError("it holds Python code (a Lambda layer or a lambda function), which "
                         "the service never loads; rebuild the model without Lambda layers")


#: Class names under which Keras serialises Python code (bytecode) in a model's config.
CODE_CLASSES = frozenset({"__lambda__", "Lambda"})


def _holds_code(config: object, depth: int = 0) -> bool:
    """True if the config names a class that carries Python code (workers load models in
    Keras' safe mode, which refuses them too: this says so at upload time)."""
    if depth > 200:  # absurdly deep: refuse rather than recurse for ever
        return True
    if isinstance(config, dict):
        if config.get("class_name") in CODE_CLASSES:
            return True
        return any(_holds_code(value, depth + 1) for value in config.values())
    if isinstance(config, list):
        return any(_holds_code(value, depth + 1) for value in config)
    return False


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
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


def check_dataset(path: Path) -> None:
    """The structural checks of `quanta.datasets.validate_npz`, from the arrays' headers.

    No array is loaded: a few kilobytes of compressed upload can claim gigabytes, and an
    object array would need unpickling. The worker loads and checks the values.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()
                       if n.endswith(".npy")}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise ValueError(f"it has no key {', '.join(missing)} "
                                 f"(it has: {', '.join(sorted(members)) or 'nothing'})")
            headers = {k: _npy_header(archive, members[k]) for k in NPZ_KEYS}
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


def check(path: Path, head: bytes, kind: str) -> None:
    """Raise ValueError saying what is wrong if the file is not a usable `kind`."""
    if kind == "weights":
        check_weights(path, head)
    elif kind == "model":
        check_model(path)
    else:
        check_dataset(path)


def stored_name(kind: str, filename: str) -> str:
    """The name an upload is stored under: what the library expects for its kind.

    Keras loads weights only from `*.weights.h5`; a dataset keeps its (sanitised) stem,
    which becomes the task's name in output folder names.
    """
    if kind == "weights":
        return SOURCE_FILE_NAMES["weights"]
    if kind == "model":
        return "model.keras"
    stem = Path(filename.replace("\\", "/")).name
    stem = stem[: -len(".npz")] if stem.lower().endswith(".npz") else Path(stem).stem
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "dataset"
    return f"{stem[:100]}.npz"
