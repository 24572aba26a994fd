"""Recognise and check an uploaded file's kind from its content, never from its name alone.

This runs in the API process, which must not import TensorFlow or `quanta`, so the
checks use h5py, zipfile and numpy; the worker re-checks datasets fully with
`quanta.datasets` when it loads them.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: HDF5 allows a user block before the superblock; it then starts at one of these offsets.
HDF5_OFFSETS = (0, 512, 1024, 2048)
KINDS = ("weights", "model", "dataset")
SUFFIX_KIND = {".h5": "weights", ".hdf5": "weights", ".keras": "model", ".npz": "dataset"}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


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
            json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError("not a .keras file (not a zip archive); upload a file saved with "
                         "model.save('x.keras')") from exc
    except json.JSONDecodeError as exc:
        raise ValueError("its config.json is not valid JSON") from exc


def check_dataset(path: Path) -> None:
    """The cheap structural checks of `quanta.datasets.validate_npz`, with plain numpy."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError("not a readable .npz archive; save it with numpy.savez") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("a single .npy array, not an .npz archive; save it with numpy.savez")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"it has no key {', '.join(missing)} "
                             f"(it has: {', '.join(archive.files) or 'nothing'})")
        try:
            arrays = {k: archive[k] for k in NPZ_KEYS}
        except ValueError as exc:
            raise ValueError(f"an array holds Python objects or is unreadable ({exc})") from exc
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "iuf" or x.ndim not in (3, 4) or x.shape[0] < 1:
            raise ValueError(f"x_{split} has dtype {x.dtype} and shape {x.shape}; expected "
                             "numeric (N, H, W) or (N, H, W, C) images")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise ValueError(f"y_{split} has dtype {y.dtype} and shape {y.shape}; expected "
                             "integer labels of shape (N,)")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y_{split} has {y.shape[0]} labels but x_{split} has "
                             f"{x.shape[0]} images")


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
        return "source.weights.h5"
    if kind == "model":
        return "model.keras"
    stem = Path(filename.replace("\\", "/")).name
    stem = stem[: -len(".npz")] if stem.lower().endswith(".npz") else Path(stem).stem
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "dataset"
    return f"{stem[:100]}.npz"
