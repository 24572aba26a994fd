"""Jobs: submit, list, inspect, cancel, and fetch what they produced."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic_core import to_json
from sqlalchemy.orm import Session, object_session

from api.artifacts import content_type, stream_object, zip_stream
from api.auth import PrincipalDep
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.idempotency import IdempotencyKey, check_key, mark_replayed
from api.pagination import next_page
from api.schemas import (
    MAX_OFFSET,
    ArtifactList,
    ArtifactOut,
    ErrorBody,
    JobCreate,
    JobKind,
    JobLinks,
    JobOut,
    JobPage,
    JobStatusName,
    Progress,
    StudyProgress,
)
from quanta_jobs import attempts, crud, studies, submissions
from quanta_jobs.errors import Conflict, NotFound
from quanta_jobs.job_state import TERMINAL, JobStatus
from quanta_jobs.models import Job
from quanta_jobs.store import InvalidKey
from quanta_jobs.store import check_key as check_store_key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
PREFIX = "/v1/jobs"

NOT_FOUND = {404: {"model": ErrorBody, "description": "No such job (or file)."}}
CONFLICT = {409: {"model": ErrorBody, "description": "The job's state forbids it."}}
INVALID = {422: {"model": ErrorBody, "description": "Invalid field; `loc` names it."}}
SUBMIT = {
    200: {"model": JobOut, "description": "A replay: the job created by the first request "
          "with this Idempotency-Key (header `Idempotent-Replayed: true`)."},
    413: {"model": ErrorBody, "description": "Body larger than QUANTA_MAX_JSON_BYTES."},
    429: {"model": ErrorBody, "description": "Too many queued jobs for this token "
          "(QUANTA_MAX_QUEUED_PER_OWNER)."},
    507: {"model": ErrorBody, "description": "This token keeps more bytes than its quota "
          "(QUANTA_MAX_STORED_BYTES_PER_OWNER)."},
}


def job_out(job: Job, study_progress: dict | None = None) -> JobOut:
    """The job as the API shows it; `study_progress` is a study's, if already counted."""
    base = f"{PREFIX}/{job.id}"
    return JobOut(
        id=job.id,
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        spec=job.spec,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        attempts=job.attempts,
        handbacks=job.handbacks or 0,
        cancel_requested=job.cancel_requested,
        worker=job.worker,
        parent_id=job.parent_id,
        study_run=job.study_run,
        progress=_progress(job, study_progress),
        result=job.result,
        error=job.error,
        links=JobLinks(self=base, cancel=f"{base}/cancel", artifacts=f"{base}/artifacts",
                       archive=f"{base}/archive", events=f"{base}/events",
                       **({"children": f"{base}/children", "summary": f"{base}/summary"}
                          if job.kind == studies.KIND else {})),
    )


def jobs_out(session: Session, jobs: list[Job]) -> list[JobOut]:
    """A page of jobs, with the progress of all its studies counted in one query."""
    progress = studies.studies_progress(session, [j.id for j in jobs if j.kind == studies.KIND])
    return [job_out(j, progress.get(j.id)) for j in jobs]


def _progress(job: Job, study_progress: dict | None) -> Progress | StudyProgress | None:
    """A job's progress; a study's is counted from its children."""
    if job.kind == studies.KIND:
        if study_progress is None:
            session = object_session(job)
            if session is None:
                return None
            study_progress = studies.study_progress(session, job)
        return StudyProgress.model_validate(study_progress)
    return Progress.model_validate(job.progress) if job.progress else None


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Submit a job",
    responses={**INVALID, **CONFLICT, **SUBMIT},
)
def create_job(
    body: Annotated[JobCreate, Body(discriminator="kind")],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Queue a source training or a transfer experiment.

    Files are named by reference: `{"job": ID}` (a succeeded job of the right kind) or
    `{"upload": ID}` (an upload of the right kind); a bad reference is a 422 naming
    the field, a job that has not succeeded yet a 409. With an `Idempotency-Key`, a
    retry returns the first job (200, `Idempotent-Replayed: true`), never a second one.
    """
    submitted = submissions.submit(session, settings, celery, body.kind, body.spec,
                                   principal.name, principal.owner_filter,
                                   check_key(idempotency_key))
    if submitted.replayed:
        mark_replayed(response)
    response.headers["Location"] = f"{PREFIX}/{submitted.job.id}"
    return job_out(submitted.job)


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[JobStatusName | None, Query(description="Only jobs in this status.")] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    parent_id: Annotated[str | None, Query(max_length=64,
                                           description="Only the jobs of this study.")] = None,
) -> Response:
    """A page of jobs; `next` is the URL of the following page (absent on the last one)."""
    rows, total = crud.list_job_rows(session, status=status, kind=kind, limit=limit,
                                     offset=offset, owner=principal.owner_filter,
                                     parent_id=parent_id)
    following = next_page(PREFIX, {"status": status, "kind": kind, "parent_id": parent_id},
                          limit=limit, offset=offset, shown=len(rows), total=total)
    progress = studies.studies_progress(session, [r.id for r in rows if r.kind == studies.KIND])
    page = {"items": [_list_item(row, progress.get(row.id)) for row in rows], "total": total,
            "limit": limit, "offset": offset, "next": following}
    return Response(to_json(page, inf_nan_mode="null"), media_type="application/json")


def _list_item(row: crud.JobRow, study_progress: dict | None) -> dict[str, Any]:
    """What `job_out` shows of a job (tested equal), as plain values from a row of the
    list: a page is read and written without building a model per job, and its JSON
    is written once, from those values (FastAPI would validate a `JobPage` first)."""
    (job_id, kind, status, spec, created_at, started_at, finished_at, updated_at, attempts,
     handbacks, cancel_requested, worker, parent_id, study_run, progress, result, error) = row
    base = f"{PREFIX}/{job_id}"
    study = kind == studies.KIND
    if study:
        progress = StudyProgress.model_validate(study_progress).model_dump()
    elif progress:
        progress = Progress.model_validate(progress).model_dump()
    return {
        "id": job_id, "kind": kind, "status": status, "spec": spec,
        "created_at": created_at, "started_at": started_at, "finished_at": finished_at,
        "updated_at": updated_at, "attempts": attempts, "handbacks": handbacks or 0,
        "cancel_requested": cancel_requested,
        "worker": worker, "parent_id": parent_id, "study_run": study_run,
        "progress": progress or None, "result": result, "error": error,
        "links": {"self": base, "cancel": f"{base}/cancel", "artifacts": f"{base}/artifacts",
                  "archive": f"{base}/archive", "events": f"{base}/events",
                  "children": f"{base}/children" if study else None,
                  "summary": f"{base}/summary" if study else None},
    }


@router.get("/{job_id}", response_model=JobOut, summary="A job", responses=NOT_FOUND)
def get_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """Status, progress (run r of R, epoch e of E, latest quantas and metrics), timestamps,
    attempts, and for a failed job the `error`."""
    return job_out(crud.get_job(session, job_id, owner=principal.owner_filter))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    responses={**NOT_FOUND, **CONFLICT},
)
def cancel_job(job_id: str, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep, celery: CeleryDep) -> JobOut:
    """A queued job is cancelled at once; a running one gets `cancel_requested` and stops
    at the worker's next check (between batches); a finished one is a 409. The files it
    wrote are kept (listed with `partial: true`). Cancelling a study cancels its queued
    and running jobs; it ends `cancelled` once none is left running."""
    job = crud.get_job(session, job_id, owner=principal.owner_filter)
    if job.kind == studies.KIND:
        study = studies.cancel_study(session, job)
        for child_id in studies.cancelled_children(session, study.id):
            attempts.discard(settings, child_id)
        return job_out(study)
    job = crud.cancel_job(session, job)
    session.commit()
    studies.after_cancel(session, celery, job)
    if job.status == JobStatus.CANCELLED:  # a queued job handed back by a worker may have some
        attempts.discard(settings, job.id)
    return job_out(job)


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    summary="The files a job produced",
    responses=NOT_FOUND,
)
def list_artifacts(job_id: str, session: SessionDep, principal: PrincipalDep) -> ArtifactList:
    """Paths are relative to the job's output folder, in the seed's layout. `partial` is
    true unless the job succeeded: a failed or cancelled job's files are what it had
    written when it stopped."""
    job = crud.get_job(session, job_id, owner=principal.owner_filter)
    items = [
        ArtifactOut(path=a.path, size=a.size, sha256=a.sha256,
                    url=f"{PREFIX}/{job_id}/artifacts/{a.path}")
        for a in crud.list_artifacts(session, job_id)
    ]
    return ArtifactList(job_id=job_id, items=items, partial=job.status != JobStatus.SUCCEEDED)


@router.get(
    "/{job_id}/artifacts/{path:path}",
    summary="Download one file",
    response_class=FileResponse,
    responses={
        200: {"description": "The file.", "content": {
            "application/jsonl": {}, "application/zip": {}, "application/x-hdf5": {},
            "image/png": {}, "application/octet-stream": {}}},
        304: {"description": "Not modified (If-None-Match matched the ETag, its SHA-256)."},
        **NOT_FOUND,
    },
)
def download_artifact(
    job_id: str,
    path: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The `ETag` is the file's SHA-256; a matching `If-None-Match` gets a 304. A
    `Range: bytes=...` header gets that part (206), streamed from the store."""
    job = crud.get_job(session, job_id, owner=principal.owner_filter)
    artifact = crud.get_artifact(session, job_id, path)
    key = (attempts.locate(settings, job_id, job.attempts, path)
           if artifact is not None and _safe(path) else None)
    if artifact is None or key is None:
        raise NotFound(f"job '{job_id}' has no file '{path}'")
    etag = f'"{artifact.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
        if "*" in tags or artifact.sha256 in tags:
            return Response(status_code=304, headers=headers)
    try:
        return stream_object(attempts.artifacts_store(settings), key, request,
                             media_type=content_type(path), headers=headers,
                             filename=PurePosixPath(path).name)
    except FileNotFoundError:  # deleted between the lookup and now
        raise NotFound(f"job '{job_id}' has no file '{path}'") from None


def _safe(path: str) -> bool:
    """A path that names a key inside the job's folder (the store's own rule)."""
    try:
        check_store_key(path)
    except InvalidKey:
        return False
    return True


@router.get(
    "/{job_id}/archive",
    summary="Download all files as one zip",
    response_class=StreamingResponse,
    responses={200: {"description": "A zip of the output folder.",
                     "content": {"application/zip": {}}}, **NOT_FOUND, **CONFLICT},
)
def download_archive(job_id: str, request: Request, session: SessionDep,
                     settings: SettingsDep, principal: PrincipalDep) -> Response:
    """The whole output folder, streamed as a zip as it is built (never held in memory)."""
    job = crud.get_job(session, job_id, owner=principal.owner_filter)
    if job.status not in TERMINAL:
        raise Conflict(f"job '{job_id}' is {job.status}; its files are recorded when it ends")
    files = []
    for artifact in crud.list_artifacts(session, job_id):
        key = attempts.locate(settings, job_id, job.attempts, artifact.path)
        if key is not None:
            files.append((artifact.path, key))
    if not files:  # an empty zip with a 200 would look like a download that worked
        raise Conflict(f"job '{job_id}' {job.status} without writing any file; there is "
                       "nothing to archive" if job.status != JobStatus.SUCCEEDED else
                       f"job '{job_id}' has no files to archive")
    headers = {"Content-Disposition": f'attachment; filename="quanta-{job_id}.zip"'}
    if request.method == "HEAD":  # the same answer without building the zip (api.head)
        response = Response(media_type="application/zip", headers=headers)
        del response.headers["content-length"]
        return response
    return StreamingResponse(zip_stream(attempts.artifacts_store(settings), files,
                                        job.finished_at), media_type="application/zip",
                             headers=headers)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job and its files",
    responses={**NOT_FOUND, **CONFLICT},
)
def delete_job(job_id: str, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep) -> Response:
    """Removes a job that has ended (succeeded, failed or cancelled): its files, its
    checkpoints, its events and its row; a study takes its jobs with it. A queued or
    running job is a 409 (cancel it first), and so is one job of a study (delete the
    study). Jobs that name it as their source afterwards get a 422."""
    job = crud.get_job(session, job_id, owner=principal.owner_filter)
    if job.status not in TERMINAL:
        raise Conflict(f"job '{job_id}' is {job.status}; cancel it, then delete it once it "
                       "has ended")
    if job.parent_id is not None:
        raise Conflict(f"job '{job_id}' is part of study '{job.parent_id}'; delete the study")
    removed = crud.delete_job(session, job)
    session.commit()
    for gone in removed:
        attempts.delete_job_files(settings, gone)
    log.info("deleted job %s (%d with its study's jobs) for '%s'", job_id, len(removed),
             principal.name)
    return Response(status_code=204)
