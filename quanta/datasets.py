"""The image classification tasks of QUANTA, loaded as plain uint8 numpy arrays.

This module never imports TensorFlow or Keras: the API process uses it to validate
uploaded `.npz` files and must stay light. It reads the official archives from the
folder Keras itself caches them in, so an existing Keras cache is reused, and it
downloads a missing archive (checked against its SHA-256) when the network allows.

Tasks: the names in `quanta_spec.BUILTIN_TASKS`, `npz:PATH` for a user file
holding `x_train`, `y_train`, `x_test`, `y_test`, or `images:PATH.zip` for a zip of class
folders of images (`quanta.image_folders`, Pillow).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import pickle
import tarfile
import threading
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.client import HTTPException
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quanta.image_folders import decode_image_zip
from quanta_spec.errors import QuantaError
from quanta_spec.files import replacing
from quanta_spec.images import DEFAULT_RESIZE_METHOD, IMAGES_PREFIX, image_zip_path
from quanta_spec.lru import LRU
from quanta_spec.tasks import BUILTIN_TASKS, TASKS, default_data_dir

#: Where the official files come from; tests point these at a local server.
_URL_BASES = {
    "toronto": "https://www.cs.toronto.edu/~kriz/",
    "keras": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
}
_DOWNLOAD_TIMEOUT_S = 10.0

#: Local file name (relative to the data dir) -> (URL base key, name at that base).
#: The local names are those Keras 2 gives these files in its cache.
_REMOTE = {
    "cifar-10-batches-py.tar.gz": ("toronto", "cifar-10-python.tar.gz"),
    "cifar-100-python.tar.gz": ("toronto", "cifar-100-python.tar.gz"),
    "mnist.npz": ("keras", "mnist.npz"),
    "fashion-mnist/train-labels-idx1-ubyte.gz": ("keras", "train-labels-idx1-ubyte.gz"),
    "fashion-mnist/train-images-idx3-ubyte.gz": ("keras", "train-images-idx3-ubyte.gz"),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": ("keras", "t10k-labels-idx1-ubyte.gz"),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": ("keras", "t10k-images-idx3-ubyte.gz"),
}
#: Other names the same file may already have: its official name, and the name Keras 3 uses.
_ALIASES = {
    "cifar-10-batches-py.tar.gz": ("cifar-10-python.tar.gz", "cifar-10-batches-py-target_archive"),
    "cifar-100-python.tar.gz": ("cifar-100-python-target_archive",),
}
#: SHA-256 of the official files, checked on download only (mirrors and re-packs exist).
#: CIFAR and MNIST: the hashes Keras checks. Fashion-MNIST: TensorFlow Datasets'
#: tensorflow_datasets/url_checksums/fashion_mnist.txt (the files Zalando publishes,
#: which tf-keras-datasets mirrors).
_SHA256 = dict(
    zip(
        _REMOTE,
        (
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        strict=True,
    )
)
#: The files each task with files reads (`quanta_spec.tasks`, in the loader's order).
_TASK_FILES = {name: task.files for name, task in TASKS.items() if task.files}
_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: `digits` has no official split: the first 1440 of sklearn's 1797 images train, the rest test.
DIGITS_TRAIN_SIZE = TASKS["digits"].train_size


#: More classes than this is taken as a mistake in the labels, not a task.
MAX_CLASSES = 10_000


class DatasetError(QuantaError):
    """A dataset file is missing or unusable; the message tells the end user what to do."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One task's train and test splits: uint8 images (N, H, W, C) and int64 labels.

    The arrays are read-only because loaded datasets are cached and shared.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    nb_classes: int

    def __post_init__(self) -> None:
        for field in _KEYS:
            view = getattr(self, field).view()
            view.flags.writeable = False
            object.__setattr__(self, field, view)
        for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test)):
            if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != x.shape[:1]:
                raise ValueError("a Dataset holds uint8 (N, H, W, C) images and int64 (N,) labels")

    @property
    def nbytes(self) -> int:
        """The bytes its four arrays hold."""
        return sum(int(getattr(self, key).nbytes) for key in _KEYS)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C), the shape a model's input layer needs."""
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    def take(self, n: int | None) -> Dataset:
        """The first `n` images of each split, for quick runs; views, no copy."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"take(n) needs n >= 1 or None, got {n}")
        return replace(self, **{key: getattr(self, key)[:n] for key in _KEYS})


# Decoded datasets, most recently used last: key (task, paths) -> (file stamps, Dataset).
# A worker bounds it in bytes too (`limit_cache`): its jobs' datasets come and go.
_CACHE: LRU[tuple[Any, ...], tuple[tuple[Any, ...], Dataset]] = LRU(
    size=8, weigh=lambda item: item[1].nbytes)
# One load at a time: also stops two threads from downloading the same file.
_LOCK = threading.RLock()


def clear_cache() -> None:
    """Forget every decoded dataset (tests, or to free memory)."""
    with _LOCK:
        _CACHE.clear()


def limit_cache(max_bytes: int | None) -> None:
    """Keep at most `max_bytes` of decoded datasets between loads (None: no bound; 0:
    none). A dataset larger than the bound is decoded for its job and not kept."""
    with _LOCK:
        _CACHE.resize(_CACHE.size, max_bytes)


def cache_usage() -> tuple[int, int]:
    """(datasets kept, their bytes)."""
    with _LOCK:
        return len(_CACHE), _CACHE.bytes


def load_dataset(
    task: str, data_dir: str | Path | None = None, *, download: bool = True,
    image_shape: tuple[int, int, int] | None = None,
    resize_method: str = DEFAULT_RESIZE_METHOD,
) -> Dataset:
    """Load a task by name, decoding each file once per process (until it changes on disk).

    `image_shape` (H, W, C) and `resize_method` apply to `images:` zips only: every image
    is converted to C channels and resized to H x W (`quanta.image_folders.fit_images`'s
    Pillow calls); without a shape the images must share one size. Built-in tasks and
    `.npz` files are returned as stored.
    """
    with _LOCK:
        if task == "digits":
            return _cached(("digits",), (), _load_digits)
        if task.startswith("npz:"):
            path = Path(task[4:]).expanduser()
            if not task[4:] or not path.is_file():
                raise DatasetError(f"Dataset file '{path}' does not exist; check npz:PATH.")
            path = path.resolve()
            return _cached(("npz", str(path)), (path,), lambda: validate_npz(path))
        zipped = image_zip_path(task)
        if zipped is not None:
            path = Path(zipped).expanduser()
            if not zipped or not path.is_file():
                raise DatasetError(f"Dataset file '{path}' does not exist; check "
                                   f"{IMAGES_PREFIX}PATH.zip.")
            path = path.resolve()
            shape = tuple(image_shape) if image_shape is not None else None
            return _cached(("images", str(path), shape, resize_method), (path,),
                           lambda: load_image_zip(path, image_shape, resize_method))
        if task not in _TASK_FILES:
            raise DatasetError(
                f"Unknown task '{task}'; use one of {', '.join(BUILTIN_TASKS)}, npz:PATH or "
                f"{IMAGES_PREFIX}PATH.zip."
            )
        folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        paths = _find_files(task, folder, download)
        key = (task, *(str(p) for p in paths))
        return _cached(key, paths, lambda: _DECODERS[task](*paths))


def load_image_zip(path: str | Path, image_shape: tuple[int, int, int] | None = None,
                   resize_method: str = DEFAULT_RESIZE_METHOD) -> Dataset:
    """A zip of class folders of images as a Dataset (`quanta_spec.images` has the layout),
    named after the zip's stem; DatasetError saying what to fix otherwise."""
    path = Path(path)
    try:
        arrays = decode_image_zip(path, image_shape, resize_method)
    except FileNotFoundError as exc:
        raise DatasetError(f"Dataset file {path}: the file does not exist.") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"Dataset file {path}: {exc}. Zip one folder of PNG, JPEG, BMP or GIF images per "
            "class (train/<class>/ and test/<class>/, or <class>/ alone)."
        ) from exc
    name = path.name[: -len(".zip")] if path.name.lower().endswith(".zip") else path.stem
    return Dataset(name, arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test,
                   nb_classes=len(arrays.classes))


def validate_npz(path: str | Path) -> Dataset:
    """Load a user's .npz without pickle, refusing anything a model could not train on."""
    path = Path(path)
    return _dataset_from_npz(
        path,
        path.name.removesuffix(".npz"),
        "Save x_train, y_train, x_test and y_test as plain numeric arrays with numpy.savez.",
    )


def _cached(key: tuple[Any, ...], paths: tuple[Path, ...], load: Callable[[], Dataset]) -> Dataset:
    stamps = tuple((st.st_size, st.st_mtime_ns) for st in (p.stat() for p in paths))
    hit = _CACHE.peek(key)
    if hit is not None and hit[0] == stamps:
        return hit[1]
    dataset = load()
    _CACHE.put(key, (stamps, dataset))
    return dataset


def task_files(task: str) -> list[tuple[str, ...]]:
    """The files a built-in task reads from the data folder, each as the names it may
    have there (the official one first); [] for a user's `npz:` or `images:` file or an
    unknown task.
    A worker fetches them from the service's store before the task loads."""
    return [(local, *_ALIASES.get(local, ())) for local in _TASK_FILES.get(task, ())]


def _url(local: str) -> str:
    base, remote = _REMOTE[local]
    return _URL_BASES[base] + remote


def _fix_hint(path: Path) -> str:
    local = next(k for k in _REMOTE if path.name in (Path(k).name, *_ALIASES.get(k, ())))
    return f"Delete it, or replace it with the official file from {_url(local)}."


def _find_files(task: str, folder: Path, download: bool) -> tuple[Path, ...]:
    found, missing = [], []
    for local in _TASK_FILES[task]:
        names = (local, *_ALIASES.get(local, ()))
        path = next((folder / n for n in names if (folder / n).is_file()), None)
        if path is None and download:
            try:
                path = _download(local, folder / local)
            except (OSError, HTTPException) as exc:  # offline, timeout, read-only folder...
                missing.append((local, f"the download failed: {exc}"))
                continue
        if path is None:
            missing.append((local, "downloads are turned off"))
        else:
            found.append(path)
    if missing:
        names = ", ".join(_REMOTE[n][1] for n, _ in missing)
        urls = ", ".join(_url(n) for n, _ in missing)
        it = "it" if len(missing) == 1 else "them"
        raise DatasetError(
            f"Task '{task}' needs {names} in the folder {(folder / missing[0][0]).parent}, "
            f"and {it} could not be found there ({missing[0][1]}). Download {it} from {urls} "
            f"into that folder, or set QUANTA_DATA_DIR to the data folder that holds {it}."
        )
    return tuple(found)


def _download(local: str, target: Path) -> Path:
    url, expected = _url(local), _SHA256[local]
    with replacing(target) as tmp:
        digest = hashlib.sha256()
        with (
            open(tmp, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise DatasetError(
                f"The file downloaded from {url} has SHA-256 {digest.hexdigest()}, not the "
                f"expected {expected}; it was not kept. Retry later, or download it yourself "
                f"to {target}."
            )
    return target


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR batches, and nothing that could run code."""

    _reconstruct = np.array(0).__reduce__()[0]
    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it refers to the Python global {module}.{name}, which no CIFAR batch contains"
            ) from None


def _read_cifar(
    path: Path, folder: str, batches: tuple[str, ...], label_key: bytes, nb_classes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    wanted = {f"{folder}/{b}": b for b in batches}
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                f = tar.extractfile(member) if member.name in wanted else None
                if f is not None:
                    raw[wanted[member.name]] = f.read()
        absent = [f"{folder}/{b}" for b in batches if b not in raw]
        if absent:
            raise ValueError(f"it has no {', '.join(absent)}")
        out = []
        for batch in batches:
            d = _CifarUnpickler(io.BytesIO(raw[batch]), encoding="bytes").load()
            data, labels = d[b"data"], np.asarray(d[label_key], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{batch} holds {data.dtype} data of shape {data.shape}")
            if labels.shape != data.shape[:1] or labels.min() < 0 or labels.max() >= nb_classes:
                raise ValueError(f"{batch} has wrong labels")
            out.append((data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels))
        return out
    except Exception as exc:  # any damage at all: the user's remedy is the same
        raise DatasetError(
            f"Dataset file {path} is not a valid CIFAR archive ({exc}). {_fix_hint(path)}"
        ) from exc


def _load_cifar10(path: Path) -> Dataset:
    names = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    parts = _read_cifar(path, "cifar-10-batches-py", names, b"labels", 10)
    x_train = np.concatenate([x for x, _ in parts[:5]])
    y_train = np.concatenate([y for _, y in parts[:5]])
    return Dataset("cifar10", x_train, y_train, np.ascontiguousarray(parts[5][0]), parts[5][1], 10)


def _load_cifar100(path: Path) -> Dataset:
    (x_tr, y_tr), (x_te, y_te) = _read_cifar(
        path, "cifar-100-python", ("train", "test"), b"fine_labels", 100
    )
    return Dataset(
        "cifar100", np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te, 100
    )


def _load_mnist(path: Path) -> Dataset:
    dataset = _dataset_from_npz(path, "mnist", _fix_hint(path))
    if dataset.input_shape != (28, 28, 1) or dataset.nb_classes > 10:
        raise DatasetError(
            f"Dataset file {path} does not hold 28x28 MNIST digits of 10 classes. {_fix_hint(path)}"
        )
    return replace(dataset, nb_classes=10)


def _read_idx(path: Path, magic: int, header: int) -> tuple[np.ndarray, tuple[int, ...]]:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        dims = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4))
        if len(data) < header or int.from_bytes(data[:4], "big") != magic:
            raise ValueError(f"it is too short or its IDX magic number is not {magic}")
        if len(data) != header + math.prod(dims) or 0 in dims:
            raise ValueError(f"it holds {len(data) - header} bytes of data for dimensions {dims}")
    except (OSError, EOFError, ValueError) as exc:
        raise DatasetError(
            f"Dataset file {path} is not a valid IDX file ({exc}). {_fix_hint(path)}"
        ) from exc
    return np.frombuffer(data, np.uint8, offset=header), dims


def _load_fashion_mnist(*paths: Path) -> Dataset:
    splits = []
    for labels_path, images_path in (paths[:2], paths[2:]):
        labels, _ = _read_idx(labels_path, 2049, 8)
        images, (n, rows, cols) = _read_idx(images_path, 2051, 16)
        if labels.shape != (n,) or labels.max() >= 10:
            raise DatasetError(
                f"Dataset file {labels_path} does not hold {n} labels in 0-9 for "
                f"{images_path.name}. {_fix_hint(labels_path)}"
            )
        splits += [images.reshape(n, rows, cols, 1), labels.astype(np.int64)]
    return Dataset("fashion_mnist", *splits, nb_classes=10)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # lazy: only this task needs scikit-learn

    digits = load_digits()
    x = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    n = DIGITS_TRAIN_SIZE
    return Dataset("digits", x[:n], y[:n], x[n:], y[n:], nb_classes=10)


_DECODERS = {
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "mnist": _load_mnist,
    "fashion_mnist": _load_fashion_mnist,
}


def _dataset_from_npz(path: Path, name: str, hint: str) -> Dataset:
    def fail(problem: str) -> DatasetError:
        return DatasetError(f"Dataset file {path}: {problem}. {hint}")

    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise fail("the file does not exist") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise fail("it is not a readable .npz archive (numpy.savez)") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail("it is a single .npy array, not an .npz archive (numpy.savez)")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        missing = [k for k in _KEYS if k not in archive.files]
        if missing:
            raise fail(f"it has no key {', '.join(missing)} (it has: {', '.join(archive.files)})")
        for key in _KEYS:
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                if "pickle" in str(exc) or "Object arrays" in str(exc):
                    problem = f"key {key} contains Python objects, which are not loaded"
                else:
                    problem = f"key {key} is unreadable ({exc})"
                raise fail(problem) from exc
    out = {}
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = arrays[xk], arrays[yk]
        if x.dtype.kind not in "iuf":
            raise fail(f"key {xk} has dtype {x.dtype}; use an integer or float dtype")
        if x.ndim == 3:
            x = x[..., np.newaxis]
        if x.ndim != 4 or not 1 <= x.shape[3] <= 4 or 0 in x.shape[1:]:
            raise fail(f"key {xk} has shape {x.shape}; expected (N, H, W) or (N, H, W, C), C 1-4")
        if x.shape[0] < 1:
            raise fail(f"key {xk} holds no image")
        lo, hi = x.min(), x.max()
        if not (lo >= 0 and hi <= 255):  # also false for NaN
            raise fail(f"key {xk} has values from {lo} to {hi}; pixel values must be in [0, 255]")
        x = (np.rint(x) if x.dtype.kind == "f" else x).astype(np.uint8, copy=False)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise fail(f"key {yk} has dtype {y.dtype} and shape {y.shape}; expected integer (N,)")
        if y.shape[0] != x.shape[0]:
            raise fail(f"key {yk} has {y.shape[0]} labels but {xk} has {x.shape[0]} images")
        if y.min() < 0:
            raise fail(f"key {yk} has the negative label {y.min()}; labels must be 0, 1, 2...")
        out[xk], out[yk] = x, y.astype(np.int64)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise fail(
            f"keys x_train and x_test have images of shapes {out['x_train'].shape[1:]} and "
            f"{out['x_test'].shape[1:]}; they must match"
        )
    nb_classes = int(max(out["y_train"].max(), out["y_test"].max())) + 1
    if nb_classes < 2:
        raise fail("keys y_train and y_test hold a single class; a task needs at least two")
    if nb_classes > MAX_CLASSES:
        raise fail(
            f"the largest label is {nb_classes - 1}; labels must be 0..{MAX_CLASSES - 1} "
            "(the output layer has one unit per class)"
        )
    return Dataset(name, out["x_train"], out["y_train"], out["x_test"], out["y_test"], nb_classes)
