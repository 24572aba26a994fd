"""The spec of a `scores` job: baseline transferability scores of a frozen source.

A quick look before (or beside) a study: the source runs once over the target training
samples and each transferable layer's features get LogME, H-score, TransRate and GBC,
the source's softmax LEEP and NCE (`quanta.score_features`); nothing is trained. A
study with `baselines` computes the same scores with `study_scores_spec`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from quanta_spec.networks import Architecture
from quanta_spec.specs import (
    NB_TRANSFERABLE_LAYERS,
    BuiltinTask,
    FileRef,
    JobRef,
    RemoteStudySpec,
    TaskRef,
    UploadRef,
    _check_suffix,
    _check_task,
)

#: The file of the scores, in the job's experiment folder (a study: beside summary.json).
BASELINE_SCORES_JSON = "baseline_scores.json"

ScoredLayer = Annotated[int, Field(ge=0, le=NB_TRANSFERABLE_LAYERS - 1)]


class ScoresSpec(BaseModel):
    """Baseline scores of a source's layers on a target task (local: files by path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_task: TaskRef = Field(description="Task of the pre-trained source model.")
    source_weights: FileRef = Field(description="Weights of the pre-trained source model (.h5).")
    target_task: TaskRef = Field(description="Task whose training samples are scored.")
    layers: list[ScoredLayer] | Literal["all"] = Field(
        default="all", description="Layers to score: numbers 0-6, or \"all\".")
    architecture: Architecture | None = Field(
        default=None,
        description="The source's network (kes2021 or compact2025); absent: read off the "
        "weights file.")
    width_multiplier: float = Field(
        default=1.0, gt=0, le=4, description="The source network's width multiplier.")
    nb_of_target_samples: PositiveInt | None = Field(
        default=None,
        description="Score the first N training samples of the target (all when absent), "
        "the samples a transfer with the same option trains on.")

    _tasks = field_validator("source_task", "target_task")(_check_task)

    @field_validator("source_weights")
    @classmethod
    def _h5_file(cls, value: FileRef) -> FileRef:
        return _check_suffix(value, (".h5",), "source_weights")

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one layer (0-6), or \"all\"")
            if len(set(value)) != len(value):
                raise ValueError(f"layers {value} repeat a layer")
        return value

    @property
    def scored_layers(self) -> tuple[int, ...]:
        return tuple(range(NB_TRANSFERABLE_LAYERS)) if self.layers == "all" else tuple(
            sorted(self.layers))


class RemoteScoresSpec(ScoresSpec):
    """A `ScoresSpec` as the API accepts it: files by reference, no server paths."""

    source_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}.")
    target_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}.")
    source_weights: JobRef | UploadRef = Field(
        description="A finished source job ({\"job\": ID}) or an uploaded .weights.h5 file.")


def study_scores_spec(study: RemoteStudySpec) -> RemoteScoresSpec:
    """The scores a study with `baselines` reports: every layer any of its children
    transfers, on the samples its children train on, with the same source."""
    return RemoteScoresSpec(
        source_task=study.source_task, source_weights=study.source_weights,
        target_task=study.target_task, layers=list(study.transferred_layers),
        architecture=study.architecture, width_multiplier=study.width_multiplier,
        nb_of_target_samples=study.nb_of_target_samples)
