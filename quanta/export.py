"""The seed's output layout, written so that a crash never leaves a half-written file.

Every file is first written under a temporary name in the same folder and then
renamed over its final name (an atomic step on POSIX file systems). JSONL files
keep the reference's append semantics: a second run into the same folder adds lines.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras

from quanta.training import QuantaHistory
from quanta_spec import task_label


def experiment_dir(output_dir: str | Path, source_task: str, target_task: str) -> Path:
    """`{output_dir}/{source_task}_to_{target_task}`."""
    return Path(output_dir) / f"{task_label(source_task)}_to_{task_label(target_task)}"


def source_training_dir(output_dir: str | Path, source_task: str) -> Path:
    """`{output_dir}/{source_task}_training`."""
    return Path(output_dir) / f"{task_label(source_task)}_training"


def run_file_names(run: int, layer: str) -> dict[str, str]:
    """The seed's file names for run `run` and layer label `layer` (a number or `all`)."""
    suffix = f"r_{run}_l_{layer}"
    return {
        "source_model": f"source_{suffix}.keras",
        "target_model": f"target_{suffix}.keras",
        "quantas": f"quantas_{suffix}.jsonl",
        "source_testing": f"testing_metrics_of_source_{suffix}.jsonl",
        "target_testing": f"testing_metrics_of_target_{suffix}.jsonl",
        "target_training": f"training_metrics_of_target_{suffix}.jsonl",
        # Only with the witness option; not part of the seed's layout.
        "witness_testing": f"testing_metrics_of_witness_{suffix}.jsonl",
        "witness_training": f"training_metrics_of_witness_{suffix}.jsonl",
    }


SOURCE_FILE_NAMES = {
    "model": "source.keras",
    "weights": "source.weights.h5",
    "training": "training_metrics_of_source.jsonl",
    "testing": "testing_metrics_of_source.jsonl",
}


@contextmanager
def _replacing(path: Path, suffix: str) -> Iterator[Path]:
    """Yields a temporary path next to `path` that replaces it once written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def replace_bytes(path: str | Path, content: bytes) -> Path:
    """Writes `content` to `path` atomically and durably."""
    path = Path(path)
    with _replacing(path, path.suffix) as tmp, open(tmp, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    return path


def append_jsonl(path: str | Path, record: dict[str, Any]) -> Path:
    """Adds one JSON line to `path`, atomically (old content plus the line, then rename)."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    return replace_bytes(path, old + (json.dumps(record) + "\n").encode())


def save_model(model: keras.Model, path: str | Path) -> Path:
    path = Path(path)
    with _replacing(path, ".keras") as tmp:
        model.save(tmp)
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
        for key in sorted(history.weights, key=int)
    }
