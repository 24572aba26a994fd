"""Turn a remote spec (files named by job or upload id) into a local one (file paths).

The API calls this to validate a request before queuing it (does the job exist, is
it the right kind, has it succeeded, is the file there?) and the worker calls it
again to get the paths it trains from, so both apply the same rules. The paths are
local copies of the store's objects (`quanta_jobs.store.StoreCache`, checked against
the SHA-256 the database recorded): with the local store the files themselves, with a
bucket copies fetched once per host, so a worker needs nothing but the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from quanta_jobs import attempts, file_checks
from quanta_jobs.errors import Conflict, Invalid
from quanta_jobs.file_checks import FileLimits
from quanta_jobs.job_state import JobStatus
from quanta_jobs.models import Artifact, Job, Upload
from quanta_jobs.settings import Settings
from quanta_jobs.store import Area, IntegrityError, KeyNotFound, cache_from_settings
from quanta_spec import (
    JobRef,
    RemoteSourceSpec,
    RemoteStudySpec,
    RemoteTransferSpec,
    SourceSpec,
    TransferSpec,
    UploadRef,
    layer_label,
    run_seed,
)
from quanta_spec.file_names import SOURCE_FILE_NAMES, run_file_names
from quanta_spec.jobs import JobKind
from quanta_spec.keras_graph import GraphError, NetworkGraph
from quanta_spec.scores import RemoteScoresSpec, ScoresSpec
from quanta_spec.source_models import MAX_LAYERS_AT_ONCE

#: Which upload kind each field accepts.
UPLOAD_KIND_OF_FIELD = {
    "source_weights": "weights",
    "train_from_previous_training": "model",
    "source_model": "model",
    "source_task": "dataset",
    "target_task": "dataset",
}
#: The task prefix of each kind of dataset upload: an `.npz`, or a zip of class folders of
#: images. A task field takes either.
TASK_PREFIX_OF_KIND = {"dataset": "npz:", "images": "images:"}
LOC = ("body", "spec")
#: Largest seed: NumPy seeds are 32-bit, and run r is seeded with seed + r.
MAX_SEED = 2**32 - 1
#: Largest absolute value of each integer field of a spec.
RANGES = {
    "seed": MAX_SEED,
    "nb_of_runs": 10_000,
    "nb_of_epochs": 100_000,
    "nb_of_target_epochs": 100_000,
    "nb_of_samples": 2**31 - 1,
    "nb_of_target_samples": 2**31 - 1,
}


def _find_artifact(session: Session, job: Job, suffix: str) -> Artifact | None:
    rows = session.scalars(
        select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.path)
    )
    return next((a for a in rows if a.path == suffix or a.path.endswith("/" + suffix)), None)


def _fetched(settings: Settings, area: Area, key: str | None, sha256: str | None,
             field: str, what: str) -> Path:
    """A verified local copy of the object, or a 422 saying it is gone."""
    name = key.rsplit("/", 1)[-1] if key else what
    try:
        if key is None:
            raise KeyNotFound(what)
        return cache_from_settings(settings, area).path(key, sha256)
    except KeyNotFound:
        raise Invalid(f"{what} is missing on the server ({name}); it may have been deleted",
                      loc=(*LOC, field)) from None
    except IntegrityError:
        raise Invalid(f"{what} on the server ({name}) does not have the SHA-256 recorded "
                      "for it; it was damaged or replaced: upload it again",
                      loc=(*LOC, field)) from None


def _visible(row: Job | Upload | None, owner: str | None) -> bool:
    """A row the caller may reference: it exists, and it is theirs (or they see all)."""
    return row is not None and (owner is None or row.owner == owner)


def upload_path(session: Session, settings: Settings, ref: UploadRef, field: str,
                owner: str | None = None) -> Path:
    """A verified local copy of an upload's file that `field` may name."""
    return _upload_file(session, settings, ref, field, owner)[1]


def _upload_file(session: Session, settings: Settings, ref: UploadRef, field: str,
                 owner: str | None = None) -> tuple[str, Path]:
    """(the upload's kind, a verified local copy of its file)."""
    upload = session.get(Upload, ref.upload)
    if upload is None or not _visible(upload, owner):
        raise Invalid(f"no upload with id '{ref.upload}'", loc=(*LOC, field, "upload"))
    wanted = UPLOAD_KIND_OF_FIELD[field]
    accepted = tuple(TASK_PREFIX_OF_KIND) if wanted == "dataset" else (wanted,)
    if upload.kind not in accepted:
        needs = " or ".join(accepted)
        raise Invalid(
            f"upload '{ref.upload}' is a {upload.kind} file; {field} needs a {needs} upload",
            loc=(*LOC, field, "upload"),
        )
    return upload.kind, _fetched(settings, "uploads", upload.path, upload.sha256, field,
                                 f"upload '{ref.upload}'")


def _finished_job(session: Session, ref: JobRef, field: str, kind: str,
                  owner: str | None = None) -> Job:
    job = session.get(Job, ref.job)
    if job is None or not _visible(job, owner):
        raise Invalid(f"no job with id '{ref.job}'", loc=(*LOC, field, "job"))
    if job.kind != kind:
        raise Invalid(f"job '{ref.job}' is a {job.kind} job; {field} needs a {kind} job",
                      loc=(*LOC, field, "job"))
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(
            f"job '{ref.job}' is {job.status}; {field} needs a {kind} job that has succeeded",
            loc=(*LOC, field, "job"),
        )
    return job


def _job_file(session: Session, settings: Settings, ref: JobRef, field: str, kind: str,
              owner: str | None = None) -> Path:
    job = _finished_job(session, ref, field, kind, owner)
    if kind == JobKind.SOURCE:
        if ref.run != 0:
            raise Invalid("a source job has no runs; leave 'run' out",
                          loc=(*LOC, field, "run"))
        name = SOURCE_FILE_NAMES["weights" if field == "source_weights" else "model"]
    else:
        nb_of_runs = int(job.spec.get("nb_of_runs", 1))
        if ref.run >= nb_of_runs:
            raise Invalid(f"job '{ref.job}' has runs 0 to {nb_of_runs - 1}, not {ref.run}",
                          loc=(*LOC, field, "run"))
        layer = layer_label(job.spec["layer_to_transfer"])
        name = run_file_names(ref.run, layer)["target_model"]
    artifact = _find_artifact(session, job, name)
    if artifact is None:
        raise Invalid(f"job '{ref.job}' produced no {name} (was it a show_only_build job?)",
                      loc=(*LOC, field, "job"))
    key = attempts.locate(settings, job.id, job.attempts, artifact.path)
    return _fetched(settings, "artifacts", key, artifact.sha256, field,
                    f"{name} of job '{job.id}'")


def _file(
    session: Session, settings: Settings, ref: JobRef | UploadRef | None, field: str, kind: str,
    owner: str | None = None,
) -> str | None:
    if ref is None:
        return None
    if isinstance(ref, UploadRef):
        return str(upload_path(session, settings, ref, field, owner))
    return str(_job_file(session, settings, ref, field, kind, owner))


def _task(session: Session, settings: Settings, task: str | UploadRef, field: str,
          owner: str | None = None) -> str:
    if isinstance(task, UploadRef):
        kind, path = _upload_file(session, settings, task, field, owner)
        return f"{TASK_PREFIX_OF_KIND[kind]}{path}"
    return task


def _checked(field: str, path: str, check: Any) -> Any:
    try:
        return check(Path(path))
    except ValueError as exc:
        raise Invalid(f"{field} is refused: {exc}", loc=(*LOC, field)) from None


def _source_model(session: Session, settings: Settings,
                  spec: RemoteTransferSpec | RemoteScoresSpec, owner: str | None) -> str | None:
    """A user network's local file (checked as one: `file_checks.check_network`) or its
    `keras.applications` name; its named layers must be transferable ones."""
    ref = spec.source_model
    if ref is None or isinstance(ref, str):
        return ref
    path = _file(session, settings, ref, "source_model", JobKind.SOURCE, owner)
    assert path is not None
    graph = network_graph(path, settings)
    if isinstance(spec, RemoteScoresSpec):
        layers: tuple[Any, ...] = spec.scored_layers
    elif isinstance(spec, RemoteStudySpec):
        layers = spec.study_layers
    else:
        layers = (spec.layer_to_transfer,)
    names = [k for k in layers if isinstance(k, str)]
    try:
        graph.check_layers(names)
    except GraphError as exc:
        field = "layer_to_transfer" if type(spec) is RemoteTransferSpec else "layers"
        raise Invalid(str(exc), loc=(*LOC, field)) from None
    return path


def study_with_layers(session: Session, settings: Settings, spec: RemoteStudySpec,
                      owner: str | None) -> RemoteStudySpec:
    """A study of a user's network with its layers as the service stores them: checked
    against the network, in graph order, `"all"` expanded to every transferable layer
    (so that children, plots and the dashboard show them in the network's order)."""
    ref = spec.source_model
    if not isinstance(ref, JobRef | UploadRef):
        if spec.layers == "all":
            raise Invalid("layers \"all\" needs the network's file to list its layers: "
                          "upload it, or name the layers", loc=(*LOC, "layers"))
        return spec
    path = _file(session, settings, ref, "source_model", JobKind.SOURCE, owner)
    assert path is not None
    graph = network_graph(path, settings)
    named = [k for k in spec.layers if isinstance(k, str)] if spec.layers != "all" else None
    try:
        names = graph.in_graph_order(named) if named is not None else graph.transferable
    except GraphError as exc:
        raise Invalid(str(exc), loc=(*LOC, "layers")) from None
    if len(names) > MAX_LAYERS_AT_ONCE:
        raise Invalid(f"the network has {len(names)} transferable layers; a study measures "
                      f"at most {MAX_LAYERS_AT_ONCE}: name them", loc=(*LOC, "layers"))
    at_once = [-1] if spec.layers != "all" and -1 in spec.layers else []
    if (at_once or spec.include_all_at_once) and len(graph.transferable) > MAX_LAYERS_AT_ONCE:
        raise Invalid(f"all at once (-1) mixes every transferable layer: the network has "
                      f"{len(graph.transferable)}, more than {MAX_LAYERS_AT_ONCE}",
                      loc=(*LOC, "layers"))
    values = {**spec.model_dump(mode="json"), "layers": [*names, *at_once]}
    try:
        return RemoteStudySpec.model_validate(values)
    except ValidationError as exc:
        raise Invalid(str(exc.errors()[0]["msg"]).removeprefix("Value error, "),
                      loc=(*LOC, "layers")) from None


def network_graph(path: str | Path, settings: Settings) -> NetworkGraph:
    """The graph of a user network's file, after the checks of `check_network` (a 422
    naming source_model when it fails them)."""
    return _checked("source_model", str(path),
                    lambda p: file_checks.check_network(p, FileLimits.from_settings(settings)))


def check_ranges(spec: RemoteSourceSpec | RemoteTransferSpec | RemoteScoresSpec) -> None:
    """Numbers the spec's types allow but the service cannot honour: 422 naming the field.

    Seeds feed NumPy's 32-bit generator (seed + run), and counts of runs, epochs and
    samples this large are a typo that would hold a GPU for ever.
    """
    for field, limit in RANGES.items():
        value = getattr(spec, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
            raise Invalid(f"{field} must be at most {limit} in absolute value (got {value})",
                          loc=(*LOC, field))
    if isinstance(spec, RemoteTransferSpec):
        runs = spec.max_runs if isinstance(spec, RemoteStudySpec) else spec.nb_of_runs
        last = run_seed(spec.seed, runs - 1)
        if last is not None and last > MAX_SEED:
            raise Invalid(f"seed + nb_of_runs - 1 must be at most {MAX_SEED} (got {last})",
                          loc=(*LOC, "seed"))


def resolve_spec(
    session: Session, settings: Settings,
    spec: RemoteSourceSpec | RemoteTransferSpec | RemoteScoresSpec,
    *, owner: str | None = None,
) -> SourceSpec | TransferSpec | ScoresSpec:
    """The local spec the library runs; raises `Invalid`/`Conflict` naming the bad field.

    With `owner`, jobs and uploads of other owners are unknown (the API passes the
    caller's; the worker none, since the API checked the references at submission).
    """
    check_ranges(spec)
    if isinstance(spec, RemoteStudySpec):  # its children differ only by layer and seed
        spec = spec.child_spec(spec.study_layers[0], 0)
    values: dict[str, Any] = spec.model_dump()
    values["source_task"] = _task(session, settings, spec.source_task, "source_task", owner)
    if isinstance(spec, RemoteScoresSpec):
        values["target_task"] = _task(session, settings, spec.target_task, "target_task", owner)
        values["source_weights"] = _file(session, settings, spec.source_weights,
                                         "source_weights", JobKind.SOURCE, owner)
        values["source_model"] = _source_model(session, settings, spec, owner)
        return ScoresSpec.model_validate(values)
    if isinstance(spec, RemoteTransferSpec):
        values["target_task"] = _task(session, settings, spec.target_task, "target_task", owner)
        values["source_weights"] = _file(session, settings, spec.source_weights,
                                         "source_weights", JobKind.SOURCE, owner)
        values["source_model"] = _source_model(session, settings, spec, owner)
        values["train_from_previous_training"] = _file(
            session, settings, spec.train_from_previous_training,
            "train_from_previous_training", JobKind.TRANSFER, owner,
        )
        if isinstance(spec.train_from_previous_training, UploadRef):
            _checked("train_from_previous_training", values["train_from_previous_training"],
                     lambda p: file_checks.check_keras(p, FileLimits.from_settings(settings)))
        return TransferSpec.model_validate(values)
    values["train_from_previous_training"] = _file(
        session, settings, spec.train_from_previous_training,
        "train_from_previous_training", JobKind.SOURCE, owner,
    )
    return SourceSpec.model_validate(values)


def remote_spec(kind: str, spec: dict[str, Any]
                ) -> RemoteSourceSpec | RemoteTransferSpec | RemoteScoresSpec:
    """Parse a stored spec back into its model (the database holds it as JSON)."""
    model = {JobKind.SOURCE: RemoteSourceSpec, JobKind.STUDY: RemoteStudySpec,
             JobKind.SCORES: RemoteScoresSpec}.get(kind, RemoteTransferSpec)
    return model.model_validate(spec)
