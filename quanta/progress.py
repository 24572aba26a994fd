"""A terminal progress bar per epoch for the command lines."""

from __future__ import annotations

import time
from typing import Any

import keras
from tqdm.auto import tqdm

#: The running loss and accuracy are read at most this often (seconds): reading them
#: waits for the step in flight, so doing it after every batch would slow training.
METRICS_EVERY_S = 1.0


class EpochProgressBar(keras.callbacks.Callback):
    """One tqdm bar per epoch over its batches, with the running loss and accuracy.

    It counts batches as they start (which needs no step's result) and reads the
    metrics by time, not after every batch; the epoch's own figures close the bar.
    """

    def __init__(self, nb_of_runs: int = 1, *, witness: bool = False) -> None:
        super().__init__()
        self.nb_of_runs = nb_of_runs
        #: With a witness, each run trains twice: the target, then its witness.
        self.per_run = 2 if witness else 1
        self.trainings = -1
        self._bar: tqdm | None = None
        self._shown = 0.0

    @property
    def run(self) -> int:
        return self.trainings // self.per_run

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.trainings += 1

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        run = f"run {self.run + 1}/{self.nb_of_runs} " if self.nb_of_runs > 1 else ""
        if self.per_run > 1 and self.trainings % self.per_run:
            run += "witness "
        self._bar = tqdm(
            total=self.params.get("steps"),
            desc=f"{run}epoch {epoch + 1}/{self.params.get('epochs')}",
            unit="batch",
            leave=True,
        )
        self._shown = time.monotonic()

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(batch - self._bar.n)  # `batch` batches are done
        now = time.monotonic()
        if batch and now - self._shown >= METRICS_EVERY_S:
            self._shown = now
            self._postfix(self.model.get_metrics_result())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            if self._bar.total is not None:
                self._bar.update(self._bar.total - self._bar.n)
            self._postfix(logs or {})
            self._bar.close()
            self._bar = None

    def _postfix(self, logs: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{float(logs.get('loss', 0)):.4f}",
                acc=f"{float(logs.get('categorical_accuracy', 0)):.4f}",
                refresh=False,
            )
