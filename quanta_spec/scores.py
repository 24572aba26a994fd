"""The spec of a `scores` job: baseline transferability scores of a frozen source.

A quick look before (or beside) a study: the source runs once over the target training
samples and each transferable layer's features get LogME, H-score, TransRate and GBC,
the source's softmax LEEP and NCE (`quanta.score_features`); nothing is trained. A
study with `baselines` computes the same scores with `study_scores_spec`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from quanta_spec.images import DEFAULT_RESIZE_METHOD
from quanta_spec.networks import Architecture
from quanta_spec.specs import (
    NB_TRANSFERABLE_LAYERS,
    ApplicationName,
    BuiltinTask,
    FileRef,
    JobRef,
    RemoteStudySpec,
    ResizeMethod,
    TaskRef,
    UploadRef,
    _check_suffix,
    _check_task,
)

#: The file of the scores, in the job's experiment folder (a study: beside summary.json).
BASELINE_SCORES_JSON = "baseline_scores.json"

ScoredLayer = Annotated[int, Field(ge=0, le=NB_TRANSFERABLE_LAYERS - 1)] | Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]


class ScoresSpec(BaseModel):
    """Baseline scores of a source's layers on a target task (local: files by path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_task: TaskRef = Field(description="Task of the pre-trained source model.")
    source_weights: FileRef | None = Field(
        default=None, description="Weights of the pre-trained source model (.h5), one of the "
        "built-in networks. Give this or source_model.")
    source_model: FileRef | None = Field(
        default=None, description="The pre-trained source network itself (a user's .keras, or "
        "keras.applications.NAME): its named layers are scored. Give this or source_weights.")
    preprocess: str | None = Field(
        default=None, description="With source_model: how pixels are prepared (as for a "
        "transfer).")
    resize_method: ResizeMethod = Field(
        default=DEFAULT_RESIZE_METHOD,
        description="With source_model: how images are resized to the network's input.")
    target_task: TaskRef = Field(description="Task whose training samples are scored.")
    layers: list[ScoredLayer] | Literal["all"] = Field(
        default="all", description="Layers to score: numbers 0-6, or \"all\"; with "
        "source_model, layer names.")
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
    def _h5_file(cls, value: FileRef | None) -> FileRef | None:
        return _check_suffix(value, (".h5",), "source_weights")

    @model_validator(mode="after")
    def _one_source(self) -> ScoresSpec:
        if (self.source_weights is None) == (self.source_model is None):
            raise ValueError("give source_weights (a built-in network's weights) or "
                             "source_model (your own network), one of them")
        if self.source_model is not None and self.layers == "all":
            raise ValueError("name the layers of a source_model to score")
        if isinstance(self.layers, list) and any(
                isinstance(k, str) != (self.source_model is not None) for k in self.layers):
            raise ValueError("layers are numbers 0-6 for the built-in networks and names "
                             "for a source_model")
        return self

    @property
    def own_network(self) -> bool:
        return self.source_model is not None

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
    def scored_layers(self) -> tuple[int | str, ...]:
        """The built-in networks' layers by number; a source_model's names as given."""
        if self.layers == "all":
            return tuple(range(NB_TRANSFERABLE_LAYERS))
        if self.own_network:
            return tuple(self.layers)
        return tuple(sorted(self.layers))


class RemoteScoresSpec(ScoresSpec):
    """A `ScoresSpec` as the API accepts it: files by reference, no server paths."""

    source_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}.")
    target_task: BuiltinTask | UploadRef = Field(
        description="A task name, or an uploaded .npz dataset as {\"upload\": ID}.")
    source_weights: JobRef | UploadRef | None = Field(
        default=None,
        description="A finished source job ({\"job\": ID}) or an uploaded .weights.h5 file.")
    source_model: JobRef | UploadRef | ApplicationName | None = Field(
        default=None, description="An uploaded .keras network ({\"upload\": ID}), a source "
        "job's model, or keras.applications.NAME.")


def study_scores_spec(study: RemoteStudySpec) -> RemoteScoresSpec:
    """The scores a study with `baselines` reports: every layer any of its children
    transfers, on the samples its children train on, with the same source."""
    return RemoteScoresSpec(
        source_task=study.source_task, source_weights=study.source_weights,
        source_model=study.source_model, preprocess=study.preprocess,
        resize_method=study.resize_method,
        target_task=study.target_task, layers=list(study.transferred_layers),
        architecture=study.architecture, width_multiplier=study.width_multiplier,
        nb_of_target_samples=study.nb_of_target_samples)
