"""A terminal progress bar per epoch for the command lines."""

from __future__ import annotations

from typing import Any

import keras
from tqdm.auto import tqdm


class EpochProgressBar(keras.callbacks.Callback):
    """One tqdm bar per epoch over its batches, with the running loss and accuracy."""

    def __init__(self, nb_of_runs: int = 1) -> None:
        super().__init__()
        self.nb_of_runs = nb_of_runs
        self.run = -1
        self._bar: tqdm | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.run += 1

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        run = f"run {self.run + 1}/{self.nb_of_runs} " if self.nb_of_runs > 1 else ""
        self._bar = tqdm(
            total=self.params.get("steps"),
            desc=f"{run}epoch {epoch + 1}/{self.params.get('epochs')}",
            unit="batch",
            leave=True,
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            logs = logs or {}
            self._bar.set_postfix(
                loss=f"{float(logs.get('loss', 0)):.4f}",
                acc=f"{float(logs.get('categorical_accuracy', 0)):.4f}",
                refresh=False,
            )
            self._bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
