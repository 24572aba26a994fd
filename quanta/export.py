"""The seed's output layout, written so that a crash never leaves a half-written file.

Every file is first written under a temporary name in the same folder and then
renamed over its final name (an atomic step on POSIX file systems). JSONL files
keep the reference's append semantics: a second run into the same folder adds lines.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import keras

from quanta.training import QuantaHistory
from quanta_spec.file_names import (  # noqa: F401 - the seed's file names, re-exported
    SOURCE_FILE_NAMES,
    experiment_dir,
    run_file_names,
    source_training_dir,
)
from quanta_spec.files import atomic_write as replace_bytes
from quanta_spec.files import replacing as _replacing
from quanta_spec.specs import ordered_layers


def append_jsonl(path: str | Path, record: dict[str, Any]) -> Path:
    """Adds one JSON line to `path`, atomically (old content plus the line, then rename)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    return replace_bytes(path, old + (json.dumps(record) + "\n").encode())


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """A JSON file, written whole or not at all."""
    return replace_bytes(Path(path), (json.dumps(record, indent=2) + "\n").encode())


def save_model(model: keras.Model, path: str | Path) -> Path:
    path = Path(path)
    with _replacing(path, ".keras") as tmp:
        model.save(tmp)
    return path


def same_file(earlier: str | Path, path: str | Path) -> Path:
    """`path` becomes the file `earlier` (a hard link, or a copy where links fail), atomically.

    For a model saved again unchanged: Keras writes the same config and weights bytes
    every time, and only the save date in `metadata.json` differs. Files are always
    replaced, never rewritten in place, so a linked file never changes under the other.
    """
    path = Path(path)
    with _replacing(path, ".keras") as tmp:
        tmp.unlink()
        try:
            os.link(earlier, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(earlier, tmp)
    return path


def save_weights(model: keras.Model, path: str | Path) -> Path:
    path = Path(path)
    with _replacing(path, ".weights.h5") as tmp:
        model.save_weights(tmp)
    return path


def training_record(history: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """One line of `training_metrics_of_*`: epoch index (as a string) to its metrics."""
    return {str(epoch): metrics for epoch, metrics in sorted(history.items())}


def quantas_record(history: QuantaHistory) -> dict[str, dict[str, Any]]:
    """One line of `quantas_*.jsonl`, keyed by the transferred layer's number.

    The reference keyed entries by Keras layer index (e.g. "5"); that index is kept
    as a field so old analyses can still be matched.
    """
    return {
        key: {
            "keras_layer_index": history.keras_layer_index[key],
            "quanta_weights": history.weights[key],
            "quantas": {"source": history.source[key], "target": history.target[key]},
        }
        for key in ordered_layers(history.weights)
    }
