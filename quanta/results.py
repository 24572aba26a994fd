"""What experiments report: progress events, per-run results, timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class Timings(dict):
    """Seconds spent per phase (data, source, build, train, evaluate, export), summed.

    Kept with every result so that benchmarks and job results can say where time went.
    """

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start

    def add(self, other: dict[str, float]) -> None:
        for name, seconds in other.items():
            self[name] = self.get(name, 0.0) + seconds


@dataclass
class EpochEvent:
    """Progress after one epoch; `epoch` counts finished epochs (1-based)."""

    run: int
    nb_of_runs: int
    epoch: int
    nb_of_epochs: int
    metrics: dict[str, float]
    quantas: dict[str, dict[str, float]] = field(default_factory=dict)


ProgressHook = Callable[[EpochEvent], None]


@dataclass
class RunResult:
    run: int
    target_metrics: dict[str, float]
    source_metrics: dict[str, float]
    #: Final quantas by transferred layer number: `{"0": {"source": λ_s, "target": λ_t}}`.
    quantas: dict[str, dict[str, float]]
    files: list[Path]
    #: Test metrics of the witness (trained from scratch), with the `witness` option.
    witness_metrics: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": [str(f) for f in self.files]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{**data, "files": [Path(f) for f in data["files"]]})

    @property
    def transfer_gain(self) -> float | None:
        """Target test accuracy minus witness test accuracy."""
        if self.witness_metrics is None:
            return None
        return (
            self.target_metrics["categorical_accuracy"]
            - self.witness_metrics["categorical_accuracy"]
        )


@dataclass
class TransferResult:
    experiment_dir: Path
    runs: list[RunResult] = field(default_factory=list)
    #: Model summaries (`show_only_build`), by model name.
    summaries: dict[str, str] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    #: The "train" phase in parts: setup, first_step (tracing a new model), steps and
    #: epoch_end (quantas, tests, checkpoints, progress), summed over the runs.
    train_timings: Timings = field(default_factory=Timings)


@dataclass
class SourceResult:
    training_dir: Path
    test_metrics: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    summary: str = ""
    timings: Timings = field(default_factory=Timings)
    #: The "train" phase in parts, as for `TransferResult.train_timings`.
    train_timings: Timings = field(default_factory=Timings)
