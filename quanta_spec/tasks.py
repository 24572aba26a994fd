"""The built-in tasks, once: name, classes, split sizes, image shape and the files each reads.

TensorFlow-free, so that the spec (which names are valid), the API (the work a job
plans, from the training split's size), the worker (which files to fetch from the store)
and the library (which files to open) read one table. `quanta.datasets` adds how each
file is decoded and checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    name: str
    classes: int
    train_size: int
    test_size: int
    image_shape: tuple[int, int, int]  # (H, W, C) as the networks see it
    #: Its files in the data folder, by the names Keras 2 gives them in its cache (none:
    #: the data comes with a library, as scikit-learn's `digits`).
    files: tuple[str, ...] = ()


_FASHION = "fashion-mnist/"
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("cifar10", 10, 50_000, 10_000, (32, 32, 3), ("cifar-10-batches-py.tar.gz",)),
    Task("cifar100", 100, 50_000, 10_000, (32, 32, 3), ("cifar-100-python.tar.gz",)),
    Task("mnist", 10, 60_000, 10_000, (28, 28, 1), ("mnist.npz",)),
    Task("fashion_mnist", 10, 60_000, 10_000, (28, 28, 1), tuple(  # the loader's order
        _FASHION + name for name in (
            "train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"))),
    # scikit-learn's 1797 images have no official split: the first 1440 train.
    Task("digits", 10, 1_440, 357, (8, 8, 1)),
)}
#: The names a spec accepts besides `npz:PATH` (or an uploaded .npz).
BUILTIN_TASKS: tuple[str, ...] = tuple(TASKS)


def default_data_dir() -> Path:
    """Where the dataset files are looked for: `$QUANTA_DATA_DIR`, else the Keras cache
    (`$KERAS_HOME/datasets` or `~/.keras/datasets`), so that files Keras downloaded are
    reused."""
    if os.environ.get("QUANTA_DATA_DIR"):
        return Path(os.environ["QUANTA_DATA_DIR"]).expanduser()
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"]).expanduser() / "datasets"
    return Path.home() / ".keras" / "datasets"
