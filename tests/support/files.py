"""Files in real formats, built in memory for uploads (h5py, zipfile, NumPy)."""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any

import h5py
import numpy as np


def hdf5_bytes(datasets: dict[str, Any] | None = None) -> bytes:
    """A real HDF5 file (made with h5py), by default with content no model would accept."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for name, value in (datasets or {"not_weights": np.arange(10)}).items():
            handle.create_dataset(name, data=value)
    return buffer.getvalue()


def keras_zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Functional"}')
        archive.writestr("metadata.json", "{}")
    return buffer.getvalue()


def npz_bytes(n: int = 20, **overrides: Any) -> bytes:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_train": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8),
        "y_train": rng.integers(0, 3, n),
        "x_test": rng.integers(0, 255, (n // 2, 8, 8), dtype=np.uint8),
        "y_test": rng.integers(0, 3, n // 2),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG file, read from its header (and that it is one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
