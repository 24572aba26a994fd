"""Tests of quanta.datasets on tiny files written in the official formats (no network)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from quanta import datasets as ds
from quanta.datasets import Dataset, DatasetError, load_dataset, validate_npz

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty data folder, an empty cache and no way to reach the internet."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("QUANTA_DATA_DIR", str(folder))
    monkeypatch.setattr(
        ds, "_URL_BASES", {"toronto": "http://127.0.0.1:9/", "keras": "http://127.0.0.1:9/"}
    )
    ds.clear_cache()
    yield folder
    ds.clear_cache()


# --- writers of the official formats ---------------------------------------------------


def cifar_batch(n: int, label_key: bytes, labels: list[int], seed: int) -> dict[bytes, object]:
    """A batch dict as in the official archives: channel-first rows of 3072 bytes."""
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return {
        b"batch_label": b"batch",
        label_key: labels,
        b"data": data,
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def write_tar(path: Path, members: dict[str, object]) -> Path:
    # Protocol 4: Python 3 writes bytes natively; the official Python 2 pickles use the
    # same numpy globals (under their numpy 1 module name).
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_cifar10(path: Path, n: int = 4) -> dict[str, dict[bytes, object]]:
    batches = {
        f"data_batch_{i}": cifar_batch(n, b"labels", [(i + j) % 10 for j in range(n)], i)
        for i in range(1, 6)
    }
    batches["test_batch"] = cifar_batch(n, b"labels", [9 - j for j in range(n)], 99)
    batches["data_batch_1"][b"data"][0] = 0
    # Image 0: a single green (channel 1) pixel at row 2, column 3.
    batches["data_batch_1"][b"data"][0, 1 * 1024 + 2 * 32 + 3] = 200
    write_tar(path, {f"cifar-10-batches-py/{k}": v for k, v in batches.items()})
    return batches


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def write_fashion(folder: Path, n_train: int = 6, n_test: int = 3) -> None:
    sub = folder / "fashion-mnist"
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n * 28 * 28).reshape(n, 28, 28) % 256
        write_idx(sub / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
        write_idx(sub / f"{split}-images-idx3-ubyte.gz", images, 2051)


def write_mnist(path: Path, n_train: int = 5, n_test: int = 3) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=np.arange(n_train, dtype=np.uint8) % 10,
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test, dtype=np.uint8) % 10,
    )
    return path


# --- official tasks ----------------------------------------------------------------------


def test_cifar10_shapes_pixels_labels(data_dir: Path) -> None:
    batches = write_cifar10(data_dir / "cifar-10-batches-py.tar.gz")
    d = load_dataset("cifar10")
    assert (d.name, d.nb_classes, d.input_shape) == ("cifar10", 10, (32, 32, 3))
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64
    assert d.x_train[0, 2, 3, 1] == 200 and int(d.x_train[0].sum()) == 200
    raw = batches["data_batch_2"][b"data"][1]
    np.testing.assert_array_equal(d.x_train[5], raw.reshape(3, 32, 32).transpose(1, 2, 0))
    assert d.y_train[:4].tolist() == [1, 2, 3, 4] and d.y_test.tolist() == [9, 8, 7, 6]
    for array in (d.x_train, d.y_train, d.x_test, d.y_test):
        assert not array.flags.writeable
    with pytest.raises(ValueError):
        d.x_train[0, 0, 0, 0] = 1


def test_cifar10_under_its_official_name(data_dir: Path) -> None:
    write_cifar10(data_dir / "cifar-10-python.tar.gz")
    assert load_dataset("cifar10", download=False).x_train.shape == (20, 32, 32, 3)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    train = cifar_batch(6, b"fine_labels", [0, 99, 5, 6, 7, 8], 1)
    train[b"coarse_labels"] = [0] * 6
    test = cifar_batch(2, b"fine_labels", [42, 1], 2)
    test[b"coarse_labels"] = [1, 1]
    write_tar(
        tmp_path / "cifar-100-python.tar.gz",
        {
            "cifar-100-python/train": train,
            "cifar-100-python/test": test,
            "cifar-100-python/meta": {b"fine_label_names": []},
        },
    )
    d = load_dataset("cifar100", data_dir=tmp_path)
    assert d.nb_classes == 100 and d.x_train.shape == (6, 32, 32, 3) and d.x_test.shape[0] == 2
    assert d.y_train.tolist() == [0, 99, 5, 6, 7, 8] and d.y_test.tolist() == [42, 1]
    np.testing.assert_array_equal(
        d.x_test[1], test[b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    )


def test_mnist(data_dir: Path) -> None:
    write_mnist(data_dir / "mnist.npz")
    d = load_dataset("mnist")
    assert d.x_train.shape == (5, 28, 28, 1) and d.x_test.shape == (3, 28, 28, 1)
    assert d.nb_classes == 10 and d.y_train.tolist() == [0, 1, 2, 3, 4]


def test_mnist_with_wrong_images_is_refused(data_dir: Path) -> None:
    np.savez(
        data_dir / "mnist.npz",
        x_train=np.zeros((2, 8, 8), np.uint8),
        y_train=[0, 1],
        x_test=np.zeros((1, 8, 8), np.uint8),
        y_test=[1],
    )
    with pytest.raises(DatasetError, match=r"mnist\.npz.*28x28.*official file from .*mnist\.npz"):
        load_dataset("mnist")


def test_fashion_mnist(data_dir: Path) -> None:
    write_fashion(data_dir)
    d = load_dataset("fashion_mnist")
    assert d.x_train.shape == (6, 28, 28, 1) and d.x_test.shape == (3, 28, 28, 1)
    assert d.y_train.tolist() == [0, 1, 2, 3, 4, 5] and d.nb_classes == 10
    assert d.x_train[1, 0, 5, 0] == (28 * 28 + 5) % 256


@pytest.mark.parametrize("damage", ["magic", "truncated", "count", "not_gzip"])
def test_fashion_mnist_damaged_idx(data_dir: Path, damage: str) -> None:
    write_fashion(data_dir)
    path = data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    if damage == "magic":
        write_idx(path, np.zeros((3, 28, 28)), 2049)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "count":
        write_idx(path, np.zeros((4, 28, 28)), 2051)
    else:
        path.write_bytes(b"hello")
    with pytest.raises(DatasetError, match="t10k-") as err:
        load_dataset("fashion_mnist")
    assert "replace it with the official file" in str(err.value)


def test_take_keeps_the_first_n_without_copy() -> None:
    d = load_dataset("digits")
    small = d.take(3)
    np.testing.assert_array_equal(small.x_train, d.x_train[:3])
    assert small.y_test.tolist() == d.y_test[:3].tolist() and small.nb_classes == 10
    assert np.shares_memory(small.x_train, d.x_train) and not small.x_train.flags.writeable
    assert d.take(None) is d
    assert d.take(10_000).x_train.shape == d.x_train.shape
    assert d.take(1000).x_test.shape[0] == 357 and d.take(1000).x_train.shape[0] == 1000


def test_digits_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("digits must not touch the network")

    monkeypatch.setattr(ds.urllib.request, "urlopen", no_network)
    d = load_dataset("digits", download=True)
    assert d.x_train.shape == (1440, 8, 8, 1) and d.x_test.shape == (357, 8, 8, 1)
    assert d.x_train.dtype == np.uint8 and d.x_train.max() == 255 and d.nb_classes == 10
    assert set(d.y_train.tolist()) == set(range(10)) and d.input_shape == (8, 8, 1)


# --- cache ---------------------------------------------------------------------------


def test_cache_reuses_decoded_dataset_until_file_changes(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = data_dir / "cifar-10-batches-py.tar.gz"
    write_cifar10(path)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    first = load_dataset("cifar10")
    assert load_dataset("cifar10") is first and len(opened) == 1
    write_cifar10(path, n=2)
    opened.clear()
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = load_dataset("cifar10")
    assert len(opened) == 1 and second.x_train.shape == (10, 32, 32, 3)
    ds.clear_cache()
    load_dataset("cifar10")
    assert len(opened) == 2


def test_cache_of_npz_tasks(tmp_path: Path) -> None:
    path = write_mnist(tmp_path / "mine.npz")
    d = load_dataset(f"npz:{path}")
    assert d.name == "mine" and load_dataset(f"npz:{path}") is d


def test_the_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    """A worker's jobs bring datasets of any size: past the bound the oldest go, and one
    larger than the bound is returned for its job but not kept."""
    paths = [write_mnist(tmp_path / f"d{i}.npz") for i in range(3)]
    one = load_dataset(f"npz:{paths[0]}").nbytes
    ds.clear_cache()
    try:
        ds.limit_cache(2 * one)
        for path in paths:
            load_dataset(f"npz:{path}")
        assert ds.cache_usage() == (2, 2 * one)  # the first one went
        assert load_dataset(f"npz:{paths[2]}") is load_dataset(f"npz:{paths[2]}")
        ds.limit_cache(one - 1)
        assert ds.cache_usage() == (0, 0)
        big = load_dataset(f"npz:{paths[0]}")
        assert big.nbytes == one and ds.cache_usage() == (0, 0)
    finally:
        ds.limit_cache(None)
        ds.clear_cache()


# --- user .npz files -------------------------------------------------------------------


def test_user_npz_is_normalised(tmp_path: Path) -> None:
    path = tmp_path / "faces.npz"
    np.savez(
        path,
        x_train=np.full((4, 5, 6), 254.6, np.float32),
        y_train=np.array([[0], [2], [1], [2]]),
        x_test=np.zeros((2, 5, 6), np.int32),
        y_test=np.array([3, 0], np.uint16),
    )
    d = validate_npz(path)
    assert isinstance(d, Dataset) and d.name == "faces" and d.nb_classes == 4
    assert (
        d.x_train.shape == (4, 5, 6, 1) and d.x_train.dtype == np.uint8 and d.x_train.max() == 255
    )
    assert d.y_train.dtype == np.int64 and d.y_train.tolist() == [0, 2, 1, 2]
    assert load_dataset(f"npz:{path}").input_shape == (5, 6, 1)


def _good() -> dict[str, np.ndarray]:
    return {
        "x_train": np.zeros((4, 6, 6, 3), np.uint8),
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 6, 6, 3), np.uint8),
        "y_test": np.array([1, 0]),
    }


BAD_NPZ = {
    "missing_key": ({"y_test": None}, "y_test"),
    "object_array": (
        {"y_train": np.array([0, "a", None, 1], dtype=object)},
        "y_train.*Python objects",
    ),
    "wrong_dims": ({"x_train": np.zeros((4, 36), np.uint8)}, r"x_train.*\(4, 36\)"),
    "five_channels": ({"x_test": np.zeros((2, 6, 6, 5), np.uint8)}, r"x_test.*\(2, 6, 6, 5\)"),
    "mismatched_n": ({"y_train": np.array([0, 1, 1])}, "y_train.*3 labels.*4 images"),
    "negative_label": ({"y_test": np.array([1, -1])}, "y_test.*negative"),
    "float_out_of_range": ({"x_train": np.full((4, 6, 6, 3), 256.0)}, "x_train.*255"),
    "nan": ({"x_train": np.full((4, 6, 6, 3), np.nan)}, "x_train.*255"),
    "int_out_of_range": ({"x_test": np.full((2, 6, 6, 3), -1)}, "x_test.*255"),
    "float_labels": ({"y_train": np.array([0.0, 1, 0, 1])}, "y_train.*float64"),
    "string_images": ({"x_train": np.full((4, 6, 6, 3), "a")}, "x_train.*dtype"),
    "shape_mismatch": ({"x_test": np.zeros((2, 7, 6, 3), np.uint8)}, "x_train and x_test"),
    "empty_split": (
        {"x_test": np.zeros((0, 6, 6, 3), np.uint8), "y_test": np.zeros(0, int)},
        "x_test.*no image",
    ),
    "single_class": ({"y_train": np.zeros(4, int), "y_test": np.zeros(2, int)}, "single class"),
    "huge_label": ({"y_test": np.array([1, 10**9])}, "largest label is 1000000000"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_user_npz_failures(tmp_path: Path, case: str) -> None:
    change, pattern = BAD_NPZ[case]
    arrays = {k: v for k, v in {**_good(), **change}.items() if v is not None}
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=pattern) as err:
        validate_npz(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04 truncated zip", b""])
def test_user_npz_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"broken\.npz"):
        validate_npz(path)


def test_user_npy_instead_of_npz(tmp_path: Path) -> None:
    path = tmp_path / "one.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DatasetError, match=r"one\.npz.*single \.npy"):
        validate_npz(path)


def test_unknown_task_and_missing_npz(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"svhn.*cifar10"):
        load_dataset("svhn")
    with pytest.raises(DatasetError, match=r"nothere\.npz"):
        load_dataset(f"npz:{tmp_path / 'nothere.npz'}")


# --- missing, corrupt and malicious official files ---------------------------------------


def test_missing_file_without_download_names_file_folder_and_url(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        ds,
        "_URL_BASES",
        {
            "toronto": "https://www.cs.toronto.edu/~kriz/",
            "keras": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        },
    )
    for task, url in (("cifar10", CIFAR10_URL), ("mnist", MNIST_URL)):
        with pytest.raises(DatasetError) as err:
            load_dataset(task, download=False)
        message = str(err.value)
        assert Path(url).name in message and url in message
        assert str(data_dir) in message and "QUANTA_DATA_DIR" in message


def test_missing_file_and_no_network(data_dir: Path) -> None:
    write_fashion(data_dir)
    (data_dir / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz.*download failed") as err:
        load_dataset("fashion_mnist")
    assert str(data_dir / "fashion-mnist") in str(err.value)
    assert len(os.listdir(data_dir / "fashion-mnist")) == 3  # no partial download left


@pytest.mark.parametrize("content", [b"garbage", "truncated", "no_test_batch"])
def test_corrupt_cifar_archive(data_dir: Path, content: bytes | str) -> None:
    path = data_dir / "cifar-10-batches-py.tar.gz"
    write_cifar10(path)
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif content == "no_test_batch":
        write_tar(path, {"cifar-10-batches-py/data_batch_1": cifar_batch(2, b"labels", [0, 1], 0)})
    else:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py\.tar\.gz") as err:
        load_dataset("cifar10")
    assert "Delete it" in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, (str(self.target),))


def test_malicious_cifar_pickle_is_refused(data_dir: Path, tmp_path: Path) -> None:
    batch = cifar_batch(2, b"labels", [0, 1], 0)
    batch[b"data"] = _Evil(tmp_path / "pwned")
    write_tar(
        data_dir / "cifar-10-batches-py.tar.gz",
        {
            f"cifar-10-batches-py/{n}": batch
            for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
        },
    )
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py\.tar\.gz.*(posix|os)\.mkdir"):
        load_dataset("cifar10")
    assert not (tmp_path / "pwned").exists()


def test_unpickler_allows_only_the_numpy_array_globals() -> None:
    unpickler = ds._CifarUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is not None
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray
    for module, name in (("builtins", "eval"), ("os", "system"), ("numpy", "load")):
        with pytest.raises(pickle.UnpicklingError):
            unpickler.find_class(module, name)


# --- download ----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server standing in for both official hosts; yields the folder it serves."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=root)
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setattr(ds, "_URL_BASES", {"toronto": base, "keras": base})
    yield root
    httpd.shutdown()
    httpd.server_close()


def test_download_with_good_checksum_installs_the_file(
    data_dir: Path, server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = write_mnist(server / "mnist.npz")
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setitem(ds._SHA256, "mnist.npz", digest)
    d = load_dataset("mnist")
    assert d.x_train.shape == (5, 28, 28, 1)
    assert os.listdir(data_dir) == ["mnist.npz"]
    assert (data_dir / "mnist.npz").read_bytes() == served.read_bytes()


def test_download_into_fashion_subfolder(
    data_dir: Path, server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fashion(server)
    for path in (server / "fashion-mnist").iterdir():
        os.replace(path, server / path.name)
        monkeypatch.setitem(
            ds._SHA256,
            f"fashion-mnist/{path.name}",
            hashlib.sha256((server / path.name).read_bytes()).hexdigest(),
        )
    assert load_dataset("fashion_mnist").x_test.shape == (3, 28, 28, 1)
    assert len(os.listdir(data_dir / "fashion-mnist")) == 4


def test_download_with_bad_checksum_keeps_nothing(
    data_dir: Path, server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = write_mnist(server / "mnist.npz")
    actual = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setitem(ds._SHA256, "mnist.npz", "0" * 64)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist")
    assert "0" * 64 in str(err.value) and actual in str(err.value)
    assert os.listdir(data_dir) == []


def test_download_of_missing_url_is_a_missing_file_error(data_dir: Path, server: Path) -> None:
    with pytest.raises(DatasetError, match=r"mnist\.npz.*download failed.*404"):
        load_dataset("mnist")
    assert os.listdir(data_dir) == []


# --- environment -------------------------------------------------------------------------


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from quanta_spec.tasks import default_data_dir

    monkeypatch.setenv("QUANTA_DATA_DIR", str(tmp_path / "q"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    assert default_data_dir() == tmp_path / "q"
    monkeypatch.delenv("QUANTA_DATA_DIR")
    assert default_data_dir() == tmp_path / "k" / "datasets"
    monkeypatch.delenv("KERAS_HOME")
    assert default_data_dir() == Path.home() / ".keras" / "datasets"


def test_the_task_table_matches_what_the_loaders_give(monkeypatch: pytest.MonkeyPatch,
                                                      data_dir: Path) -> None:
    """`quanta_spec.tasks` is what the API bounds work with and the worker fetches by:
    its sizes, classes and shapes are those of the decoded data (here `digits`, offline,
    and small files in the official formats for the others)."""
    from quanta_spec.tasks import TASKS

    digits = load_dataset("digits")
    task = TASKS["digits"]
    assert (len(digits.x_train), len(digits.x_test), digits.nb_classes,
            digits.input_shape) == (task.train_size, task.test_size, task.classes,
                                    task.image_shape)
    for name in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
        assert ds.task_files(name) == [(f, *ds._ALIASES.get(f, ())) for f in TASKS[name].files]
    # every file a task reads can be downloaded and checked
    assert {f for t in TASKS.values() for f in t.files} == set(ds._REMOTE) == set(ds._SHA256)
    write_cifar10(data_dir / "cifar-10-batches-py.tar.gz")
    cifar = load_dataset("cifar10")
    assert cifar.input_shape == TASKS["cifar10"].image_shape
    assert cifar.nb_classes == TASKS["cifar10"].classes


def test_module_does_not_import_tensorflow_or_sklearn() -> None:
    code = (
        "import sys\n"
        "import quanta.datasets\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
