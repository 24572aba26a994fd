"""Resumable runs: what a run has done so far, saved after an epoch.

A worker killed in the middle of a run loses at most the epochs since the last save:
the next attempt loads the model (with its optimizer state) saved after the last saved
epoch, the states of its random generators (which `.keras` files leave out), the
metrics and quanta history so far, and goes on from there. Batches are ordered by
(seed, epoch) (`training.EpochBatches`), so a seeded run that was interrupted ends
with the same files as one that was not.

By default every epoch is saved. With `min_interval_s`, an epoch is saved only once that
long has passed since the run started or was last saved: a save costs about 0.1 s for
a small network and about a second at full width, which would otherwise dominate runs
whose epochs take a second or two. A crash then loses at most that much training.

Exporting a run's files is journaled: the size of every file before the export is
saved first, so an export cut short is rolled back and redone, never duplicated.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from time import monotonic
from typing import Any

import keras

from quanta.export import replace_bytes, save_model
from quanta.training import FitResult, QuantaHistory, rng_states, set_rng_states


class RunCheckpoint:
    def __init__(self, folder: str | Path, min_interval_s: float = 0.0) -> None:
        self.folder = Path(folder)
        self.state_path = self.folder / "state.json"
        self.min_interval_s = min_interval_s
        self._last_save = monotonic()

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {}
        return json.loads(self.state_path.read_text())

    def _write_state(self, state: dict[str, Any]) -> None:
        replace_bytes(self.state_path, json.dumps(state).encode())

    # -- training -------------------------------------------------------------------------
    def save_epoch(self, model: keras.Model, result: FitResult) -> None:
        """Saves the model after epoch `len(result.history)`, then points the state at it
        (unless the last save is more recent than `min_interval_s`)."""
        if monotonic() - self._last_save < self.min_interval_s:
            return
        epochs_done = len(result.history)
        previous = self.state().get("model")
        name = f"model_epoch_{epochs_done}.keras"
        save_model(model, self.folder / name)
        self._write_state(
            {
                "model": name,
                "history": {str(k): v for k, v in result.history.items()},
                "test_history": {str(k): v for k, v in result.test_history.items()},
                "quantas": asdict(result.quantas),
                "rng_states": rng_states(model),
            }
        )
        if previous and previous != name:
            (self.folder / previous).unlink(missing_ok=True)
        self._last_save = monotonic()

    def resume(self) -> tuple[keras.Model, FitResult] | None:
        """The model and results after the last finished epoch, or None to start afresh."""
        state = self.state()
        if not state.get("model"):
            return None
        model = keras.saving.load_model(self.folder / state["model"], safe_mode=True)
        set_rng_states(model, state["rng_states"])
        history = {int(k): v for k, v in state["history"].items()}
        tests = {int(k): v for k, v in state.get("test_history", {}).items()}
        return model, FitResult(history=history, quantas=QuantaHistory(**state["quantas"]),
                                test_history=tests)

    # -- exporting ------------------------------------------------------------------------
    def begin_export(self, files: list[Path]) -> None:
        """Records each file's size (None: absent) before the run's export touches it."""
        state = self.state()
        state["journal"] = {
            str(f): (f.stat().st_size if f.exists() else None) for f in files
        }
        self._write_state(state)

    def rollback_export(self) -> None:
        """Undoes an export that was cut short, so that it can be redone exactly once."""
        state = self.state()
        for name, size in (state.get("journal") or {}).items():
            path = Path(name)
            if size is None:
                path.unlink(missing_ok=True)
            elif path.exists() and path.stat().st_size != size:
                with open(path, "rb") as f:
                    replace_bytes(path, f.read(size))

    def finish_export(self, result: dict[str, Any]) -> None:
        """Marks the run exported, with what the caller needs to report it again."""
        state = self.state()
        state.pop("journal", None)
        model = state.pop("model", None)
        state["exported"] = result
        self._write_state(state)
        if model:
            (self.folder / model).unlink(missing_ok=True)

    def exported(self) -> dict[str, Any] | None:
        return self.state().get("exported")


def clear(folder: str | Path) -> None:
    """Removes a finished experiment's checkpoints."""
    shutil.rmtree(folder, ignore_errors=True)
