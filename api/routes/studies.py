"""Studies and live progress: children, statistics, plots, and Server-Sent Events.

A study is submitted as `POST /v1/jobs` with `kind: "study"` (see `api.routes.jobs`);
these are the endpoints that read what it became.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api import events
from api.artifacts import stream_object
from api.auth import PrincipalDep
from api.deps import SessionDep, SettingsDep
from api.pagination import next_page
from api.routes.jobs import CONFLICT, INVALID, NOT_FOUND, PREFIX, jobs_out
from api.schemas import MAX_OFFSET, JobPage, JobStatusName
from quanta_jobs import attempts, compare, crud, studies
from quanta_jobs.compare_plot import comparison_png
from quanta_jobs.errors import Conflict, Invalid, NotFound
from quanta_jobs.job_state import JobStatus
from quanta_jobs.models import Job
from quanta_spec.file_names import SUMMARY_JSON, study_plot

#: Routes under /v1/jobs/{id}/ (a study is a job) and under /v1/studies/ (several studies).
router = APIRouter(tags=["studies"])
STUDIES = "/v1/studies"
PLOT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StudySummary(BaseModel):
    """A study's statistics, per entry (a layer number, or `all` for all seven at once)."""

    model_config = ConfigDict(extra="allow")

    study: str
    spec: dict[str, Any]
    entries: dict[str, dict[str, Any]] = Field(
        description="Per entry: `runs`, `lambda_s` (by QUANTA layer: n, mean, std, ci95, "
        "values; std and ci95 are null with a single run), `lambda_s_per_epoch` (mean curve "
        "over the runs that reached each epoch), `lambda_s_runs_per_epoch` (how many did), "
        "`equal_run_lengths` (false when runs lasted different numbers of epochs), "
        "`target_accuracy`, `witness_accuracy`, `transfer_gain` (n, mean, std, ci95, values; "
        "null without witness).")
    missing: list[dict[str, Any]] = Field(
        description="Runs without results: entry, run, and why (the child job and its error).")
    complete: bool
    children: list[dict[str, Any]] = Field(description="job, layer, run, seed, status of each.")


def _study(session: SessionDep, job_id: str, owner: str | None, what: str) -> Job:
    job = crud.get_job(session, job_id, owner=owner)
    if job.kind != studies.KIND:
        raise NotFound(f"job '{job_id}' is a {job.kind} job; only studies have {what} "
                       "(POST /v1/jobs with kind 'study')")
    return job


@router.get(PREFIX + "/{job_id}/children", response_model=JobPage, summary="A study's child jobs",
            responses=NOT_FOUND)
def list_children(
    job_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[JobStatusName | None, Query(description="Only children in this status.")
                      ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    """The transfer jobs of a study, run by run and layer by layer. Each is an ordinary
    transfer job (one run, `study_run` its run in the study); also `GET /v1/jobs?parent_id=`."""
    _study(session, job_id, principal.owner_filter, "children")
    jobs, total = studies.list_children(session, job_id, status=status, limit=limit,
                                        offset=offset)
    following = next_page(f"{PREFIX}/{job_id}/children", {"status": status}, limit=limit,
                          offset=offset, shown=len(jobs), total=total)
    return JobPage(items=jobs_out(session, jobs), total=total, limit=limit, offset=offset,
                   next=following)


@router.get(
    PREFIX + "/{job_id}/summary",
    response_model=StudySummary,
    summary="A study's statistics",
    responses={**NOT_FOUND, **CONFLICT},
)
def get_summary(job_id: str, session: SessionDep, settings: SettingsDep,
                principal: PrincipalDep) -> Response:
    """Per layer: final λ_s (mean, standard deviation, Student-t 95% confidence interval
    over runs), the mean λ_s per epoch, target and witness test accuracy and the
    transfer gain, and the runs that are missing (failed or cancelled children).
    Also in the study's files as `summary.json` and `summary.csv`. A 409 until the
    study has succeeded."""
    study = _study(session, job_id, principal.owner_filter, "a summary")
    if study.status in studies.ACTIVE:
        progress = studies.study_progress(session, study)
        raise Conflict(f"study '{job_id}' is {study.status} ({progress['done']} of "
                       f"{progress['total']} child jobs ended); its summary is made when the "
                       "last one ends")
    if study.status != JobStatus.SUCCEEDED:
        reason = f": {study.error}" if study.error else ""
        raise Conflict(f"study '{job_id}' {study.status}{reason}; it has no summary")
    return JSONResponse(_read_summary(session, settings, study))


def _read_summary(session: SessionDep, settings: SettingsDep, study: Job) -> dict[str, Any]:
    key = _artifact_key(session, settings, study, SUMMARY_JSON)
    if key is None:
        raise NotFound(f"study '{study.id}' has no summary.json (deleted?)")
    with attempts.artifacts_store(settings).get(key) as reader:
        return dict(json.loads(reader.read()))


def _artifact_key(session: SessionDep, settings: SettingsDep, job: Job, path: str
                  ) -> str | None:
    """The store key of a recorded file of `job`, or None."""
    if crud.get_artifact(session, job.id, path) is None:
        return None
    return attempts.locate(settings, job.id, job.attempts, path)


@router.get(
    PREFIX + "/{job_id}/plots/{name}.png",
    summary="A plot of a job",
    response_class=FileResponse,
    responses={200: {"description": "The PNG image.", "content": {"image/png": {}}},
               **NOT_FOUND},
)
def get_plot(job_id: str, name: str, request: Request, session: SessionDep,
             settings: SettingsDep, principal: PrincipalDep) -> Response:
    """`quantas` for a transfer job (λ_s per epoch of each run), `transferability` (final
    λ_s per layer) and `accuracy` (target and witness accuracy per layer) for a study.
    Plots are drawn when the job ends; until then, and for other names, a 404."""
    job = crud.get_job(session, job_id, owner=principal.owner_filter)
    path = study_plot(name)
    key = _artifact_key(session, settings, job, path) if PLOT_NAME.match(name) else None
    if key is None:
        found = sorted(a.path.removeprefix("plots/").removesuffix(".png")
                       for a in crud.list_artifacts(session, job_id)
                       if a.path.startswith("plots/") and a.path.endswith(".png"))
        known = f"; it has {', '.join(found)}" if found else (
            f"; plots are drawn when it ends (it is {job.status})" if job.status in
            studies.ACTIVE else "")
        raise NotFound(f"job '{job_id}' has no plot '{name}'{known}")
    artifact = crud.get_artifact(session, job_id, path)
    etag = f'"{artifact.sha256}"' if artifact is not None else None
    headers = {"ETag": etag, "Cache-Control": "no-cache"} if etag else {}
    return stream_object(attempts.artifacts_store(settings), key, request,
                         media_type="image/png", headers=headers)


@router.get(
    PREFIX + "/{job_id}/events",
    summary="Follow a job live (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"description": "`event: status` (a status change), `event: epoch` (a "
                     "finished epoch), and a last `event: end`; `id:` increases.",
                     "content": {"text/event-stream": {}}}, **NOT_FOUND},
)
async def job_events_stream(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")
                             ] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_OFFSET,
                                       description="Resume after this event id.")] = None,
) -> Response:
    """Status changes and every finished epoch, from the job's start (for a study: of
    the study and of each child, each event naming its `job`, `layer` and `run`), until
    the job ends. Reconnecting with `Last-Event-ID` resumes after that event."""
    await run_in_threadpool(crud.get_job, session, job_id, owner=principal.owner_filter)
    await run_in_threadpool(session.close)  # the stream polls with short sessions of its own
    start = events.last_event_id(last_event_id, after)
    return StreamingResponse(
        events.open_stream(request, principal.name, job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )



# --- several studies -----------------------------------------------------------------
IdsQuery = Annotated[str, Query(
    max_length=4096, description="Comma-separated ids of two studies or more, the first "
    "the reference the others are compared with.")]
PartialQuery = Annotated[bool, Query(
    description="Also compare studies that have not succeeded (queued, running, failed, "
    "cancelled), on the runs that succeeded so far (no curves); else such a study is a "
    "409.")]


def _comparison(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                ids: str, partial: bool) -> dict[str, Any]:
    names = [part.strip() for part in ids.split(",") if part.strip()]
    loc = ("query", "ids")
    if len(names) < 2:
        raise Invalid("give two study ids or more, separated by commas", loc=loc)
    if len(names) > settings.max_compare_studies:
        raise Invalid(f"{len(names)} studies; at most {settings.max_compare_studies} are "
                      "compared at once (QUANTA_MAX_COMPARE_STUDIES)", loc=loc)
    if bad := next((n for n in names if not ID.match(n)), None):
        raise Invalid(f"'{bad[:80]}' is not a job id", loc=loc)
    if len(set(names)) != len(names):
        raise Invalid("a study is named twice", loc=loc)
    curves = []
    for name in names:
        study = _study(session, name, principal.owner_filter, "comparisons")
        if study.status == JobStatus.SUCCEEDED:
            curves.append(compare.from_summary(study, _read_summary(session, settings, study)))
        elif partial:
            curves.append(compare.from_children(session, study))
        else:
            raise Conflict(f"study '{name}' is {study.status}; only succeeded studies are "
                           "compared, unless partial=true (the runs that succeeded so far)",
                           loc=loc)
    return compare.compare(curves)


@router.get(
    STUDIES + "/compare",
    summary="Compare studies layer by layer",
    responses={**NOT_FOUND, **CONFLICT, **INVALID},
)
def compare_studies(ids: IdsQuery, session: SessionDep, settings: SettingsDep,
                    principal: PrincipalDep, partial: PartialQuery = False) -> dict[str, Any]:
    """Per entry (layer, or `all`) and QUANTA layer: each study's final λ_s over its runs
    (n, mean, std, ci95, values) and mean λ_s curve per epoch, and each study after the
    first compared with the first: `difference` (its mean minus the first's) and the
    two-sided p-value of Welch's t-test (null below two runs on a side or without
    variance). Only your own studies; an unknown one is a 404."""
    return _comparison(session, settings, principal, ids, partial)


@router.get(
    STUDIES + "/compare.png",
    summary="Plot of compared studies",
    response_class=Response,
    responses={200: {"description": "The PNG image.", "content": {"image/png": {}}},
               **NOT_FOUND, **CONFLICT, **INVALID},
)
def compare_plot(ids: IdsQuery, session: SessionDep, settings: SettingsDep,
                 principal: PrincipalDep, partial: PartialQuery = False) -> Response:
    """Final λ_s per layer of each study (95% CI), a star where a study differs from the
    first (Welch p < 0.05). Drawn on request from the same numbers as `compare`."""
    body = _comparison(session, settings, principal, ids, partial)
    return Response(comparison_png(body), media_type="image/png",
                    headers={"Cache-Control": "no-cache"})
