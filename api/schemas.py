"""Request and response bodies of the API, as they appear in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, SkipValidation

from quanta_spec import RemoteSourceSpec, RemoteStudySpec, RemoteTransferSpec
from quanta_spec.scores import RemoteScoresSpec

JobKind = Literal["source", "transfer", "study", "scores"]
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
UploadKind = Literal["weights", "model", "dataset", "images"]
#: Largest `offset` of a list query (databases take 64-bit integers at most).
MAX_OFFSET = 2**31 - 1


def _kind_required(schema: dict[str, Any]) -> None:
    """`kind` stays required in the schema (a discriminator must be), though it has a
    default: a generated client then fills it in, and nobody passes it twice."""
    schema["required"] = ["kind", *[k for k in schema.get("required", []) if k != "kind"]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_kind_required)


class SourceJobCreate(_Strict):
    """Train a source model."""

    kind: Literal["source"] = "source"
    spec: RemoteSourceSpec


class TransferJobCreate(_Strict):
    """Run a QUANTA transfer experiment on a source model's weights."""

    kind: Literal["transfer"] = "transfer"
    spec: RemoteTransferSpec


class StudyJobCreate(_Strict):
    """Measure several layers over several runs: one transfer job per (layer, run)."""

    kind: Literal["study"] = "study"
    spec: RemoteStudySpec


class ScoresJobCreate(_Strict):
    """Baseline transferability scores of a frozen source per layer: no training."""

    kind: Literal["scores"] = "scores"
    spec: RemoteScoresSpec


JobCreate = Annotated[SourceJobCreate | TransferJobCreate | StudyJobCreate | ScoresJobCreate,
                      Field(discriminator="kind")]


class Progress(BaseModel):
    """Where a running job is: run `run` (0-based) of `nb_of_runs`, epoch `epoch` of
    `nb_of_epochs` (a source training has one run)."""

    run: int = Field(description="0-based run number, as in the file names.")
    nb_of_runs: int
    epoch: int = Field(description="Number of epochs finished in this run.")
    nb_of_epochs: int
    fraction: float = Field(ge=0, le=1, description="Share of all epochs of the job done.")
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Latest epoch's metrics (null: not a finite number)."
    )
    quantas: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="Latest quantas by transferred layer number: {\"0\": {\"source\": λs, "
        "\"target\": λt}} (empty for a source training).",
    )


class LayerProgress(BaseModel):
    """A study's children measuring one entry (a layer number, or `all`)."""

    total: int
    done: int = Field(description="Children ended, whatever their status.")
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class StudyProgress(BaseModel):
    """Where a study is: its children ended of all, by status and by layer."""

    done: int = Field(description="Children ended, whatever their status.")
    total: int
    fraction: float = Field(ge=0, le=1, description="Share of all the children's epochs done.")
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    by_layer: dict[str, LayerProgress]


T = TypeVar("T")
#: A field typed for the schema (and generated clients) but sent as stored: the worker
#: wrote it, and validating every job of a page again would cost time and could refuse
#: a job stored by an older version.
Shown = Annotated[SkipValidation[SerializeAsAny[T]], "shown"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class SourceResult(_Open):
    """What a source training found."""

    training_dir: str = Field(description="Its folder among the job's files.")
    test_metrics: dict[str, float | None]
    model_summary: str | None = Field(
        default=None, description="The file with Keras's summary of the model.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")


class RunResult(_Open):
    run: int = Field(description="0-based, as in the file names.")
    target_metrics: dict[str, float | None]
    source_metrics: dict[str, float | None]
    quantas: dict[str, dict[str, float | None]] = Field(
        description="Final quantas by transferred layer: {\"2\": {\"source\": λs, "
        "\"target\": λt}}.")
    witness_metrics: dict[str, float | None] | None = None
    transfer_gain: float | None = Field(
        default=None, description="Target accuracy minus witness accuracy (with witness).")


class TransferResult(_Open):
    """What a transfer found, run by run."""

    experiment_dir: str = Field(description="Its folder among the job's files.")
    runs: list[RunResult]
    model_summaries: dict[str, str] | None = Field(
        default=None, description="With show_only_build: the files of the models' summaries.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")


class StudyResult(_Open):
    """The headline numbers of a study (the full statistics: its summary)."""

    entries: dict[str, dict[str, Any]] = Field(
        description="Per entry (layer number or `all`): runs, lambda_s by QUANTA layer, "
        "target_accuracy, witness_accuracy, transfer_gain (mean, std, ci95).")
    children: int
    succeeded: int
    complete: bool
    missing: list[dict[str, Any]]
    summary: str = Field(description="URL of the full statistics.")
    plots: list[str] = Field(default_factory=list, description="URLs of its plots.")


class EndedResult(_Open):
    """A job that ended without results (cancelled)."""

    message: str


class JobLinks(BaseModel):
    self: str
    cancel: str
    artifacts: str
    archive: str
    events: str | None = Field(default=None, description="Live progress (Server-Sent Events).")
    children: str | None = Field(default=None, description="A study's transfer jobs.")
    summary: str | None = Field(default=None, description="A study's statistics.")


class JobOut(BaseModel):
    """A job and everything known about it."""

    id: str
    kind: JobKind
    status: JobStatusName
    spec: Shown[RemoteStudySpec | RemoteTransferSpec | RemoteScoresSpec | RemoteSourceSpec
                | dict[str, Any]] = (
        Field(description="The spec as submitted, with every default filled in."))
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    attempts: int = Field(description="How many times a worker started it.")
    handbacks: int = Field(
        default=0, description="How many of those starts a worker that stopped on purpose "
        "(a restart, a deploy) handed back to the queue; they do not count against the "
        "attempts a job gets (QUANTA_MAX_ATTEMPTS), which are for crashes.")
    cancel_requested: bool
    worker: str | None = Field(default=None, description="The worker running or that ran it.")
    parent_id: str | None = Field(default=None, description="The study this job is part of.")
    study_run: int | None = Field(
        default=None, description="For a study's job: its run in the study (its seed is the "
        "study's seed + study_run).")
    progress: Progress | StudyProgress | None = None
    result: Shown[SourceResult | TransferResult | StudyResult | EndedResult | dict[str, Any]
                  | None] = Field(
        default=None, description="Final metrics and quantas of a finished job.")
    error: str | None = Field(default=None, description="Why a failed job failed.")
    links: JobLinks


class JobPage(BaseModel):
    items: list[JobOut]
    total: int = Field(description="Jobs matching the filters, all pages together.")
    limit: int
    offset: int
    next: str | None = Field(default=None, description="URL of the next page, if any.")


class ArtifactOut(BaseModel):
    path: str = Field(description="Relative to the job's output folder (the seed's layout).")
    size: int
    sha256: str
    url: str


class ArtifactList(BaseModel):
    job_id: str
    items: list[ArtifactOut]
    partial: bool = Field(
        default=False,
        description="True unless the job succeeded: the files of a failed or cancelled job "
        "are what it had written when it stopped (kept, never complete).",
    )


class UploadOut(BaseModel):
    id: str
    kind: UploadKind
    filename: str
    size: int
    sha256: str
    created_at: datetime


class NetworkLayer(BaseModel):
    name: str = Field(description="What layer_to_transfer and a study's layers take.")
    class_name: str = Field(alias="class", description="Its Keras class.")
    output_shape: list[int | None] | None = Field(
        description="Its output, batch first; null where the file does not say (a "
        "Sequential model's layers without weights).")
    params: int
    transferable: bool
    reason: str | None = Field(description="Why a QUANTA layer cannot follow it.")

    model_config = {"populate_by_name": True}


class NetworkLayers(BaseModel):
    """A user network's layers, in graph order (`quanta layers MODEL`)."""

    kind: Literal["Functional", "Sequential"]
    input_shape: list[int | None]
    head: str = Field(description="The classifier layer rebuilt for the target's classes.")
    params: int
    layers: list[NetworkLayer]


class UploadPage(BaseModel):
    items: list[UploadOut]
    total: int
    limit: int
    offset: int
    next: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="'ok' or the reason, per dependency.")
    workers: int | None = Field(
        default=None, description="Workers alive (their heartbeat seen within three "
        "QUANTA_HEARTBEAT_S), on every host; null when the database cannot say.")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx body: a message, or FastAPI's list of field errors."""

    detail: str | list[ErrorItem]
