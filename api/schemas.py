"""Request and response bodies of the API, as they appear in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from quanta_spec import RemoteSourceSpec, RemoteStudySpec, RemoteTransferSpec
from quanta_spec.baselines import RemoteScoresSpec

JobKind = Literal["source", "transfer", "study", "scores"]
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
UploadKind = Literal["weights", "model", "dataset"]
#: Largest `offset` of a list query (databases take 64-bit integers at most).
MAX_OFFSET = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceJobCreate(_Strict):
    """Train a source model."""

    kind: Literal["source"]
    spec: RemoteSourceSpec


class TransferJobCreate(_Strict):
    """Run a QUANTA transfer experiment on a source model's weights."""

    kind: Literal["transfer"]
    spec: RemoteTransferSpec


class StudyJobCreate(_Strict):
    """Measure several layers over several runs: one transfer job per (layer, run)."""

    kind: Literal["study"]
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
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    attempts: int = Field(description="How many times a worker started it.")
    cancel_requested: bool
    worker: str | None = Field(default=None, description="The worker running or that ran it.")
    parent_id: str | None = Field(default=None, description="The study this job is part of.")
    study_run: int | None = Field(
        default=None, description="For a study's job: its run in the study (its seed is the "
        "study's seed + study_run).")
    progress: Progress | StudyProgress | None = None
    result: dict[str, Any] | None = Field(
        default=None, description="Final metrics and quantas of a finished job."
    )
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
