"""Uploads: source weights (.weights.h5), saved models (.keras), datasets (.npz) and zips of
class folders of images."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import PrincipalDep
from api.deps import SessionDep, SettingsDep
from api.idempotency import IdempotencyKey, check_key, mark_replayed
from api.multipart import MULTIPART_OVERHEAD, receive_upload
from api.pagination import next_page
from api.schemas import (
    MAX_OFFSET,
    ErrorBody,
    NetworkLayer,
    NetworkLayers,
    UploadKind,
    UploadOut,
    UploadPage,
)
from quanta_jobs import crud, refs, upload_holds, upload_intake
from quanta_jobs.errors import Conflict, Invalid
from quanta_jobs.models import Upload, new_id
from quanta_jobs.store import store_from_settings, work_dir
from quanta_jobs.upload_kinds import KINDS
from quanta_spec import UploadRef

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
PREFIX = "/v1/uploads"

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": ".weights.h5, .keras or .npz file, or a "
                                 ".zip of class folders of images."},
                        "kind": {"type": "string", "enum": list(KINDS),
                                 "description": "Inferred from the content when absent."},
                    },
                }
            }
        },
    }
}


def upload_out(upload: Upload) -> UploadOut:
    return UploadOut(id=upload.id, kind=upload.kind, filename=upload.filename,  # type: ignore[arg-type]
                     size=upload.size, sha256=upload.sha256, created_at=upload.created_at)


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    summary="Upload weights, a model or a dataset",
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"model": UploadOut, "description": "A replay: the upload created by the first "
              "request with this Idempotency-Key (header `Idempotent-Replayed: true`)."},
        413: {"model": ErrorBody, "description": "Larger than QUANTA_MAX_UPLOAD_BYTES."},
        507: {"model": ErrorBody, "description": "Over the token's storage quota "
              "(QUANTA_MAX_STORED_BYTES_PER_OWNER)."},
        422: {"model": ErrorBody, "description": "Not a valid file of its kind."},
    },
)
async def create_upload(request: Request, response: Response, session: SessionDep,
                        settings: SettingsDep, principal: PrincipalDep,
                        idempotency_key: IdempotencyKey = None) -> UploadOut:
    """Multipart form with the field `file` and optionally `kind` (weights, model, dataset,
    images).

    The content decides: weights must be HDF5, a model a zip holding config.json, a
    dataset an .npz with x_train, y_train, x_test, y_test (numeric, matching sizes),
    images a zip of class folders of PNG, JPEG, BMP or GIF images (train/<class>/ and
    test/<class>/, or <class>/ alone, every 5th image of a class then held out to test).
    With an `Idempotency-Key`, a retry of the same file returns the first upload (200,
    `Idempotent-Replayed: true`).
    """
    key = check_key(idempotency_key)
    upload_id = new_id()
    owner = principal.name
    store = store_from_settings(settings, "uploads")
    root = work_dir(settings, "uploads", "")  # the store's folder, or the cache's with a bucket
    root.mkdir(parents=True, exist_ok=True)
    # The bytes on their way count against the quota from the first one (a request too
    # large for the upload limit gets its 413 from the parser, not a 507 here).
    declared = request.headers.get("content-length", "")
    expected = min(int(declared), settings.max_upload_bytes + MULTIPART_OVERHEAD) \
        if declared.isdigit() else 0
    hold = await run_in_threadpool(upload_holds.take, session, settings, owner, expected)

    async def arriving(size: int) -> None:
        if upload_holds.due(settings, hold, size):
            await run_in_threadpool(upload_holds.grow, session, settings, hold, size)

    try:
        form = await receive_upload(request, root, settings.max_upload_bytes, arriving)
        if form.file is None:
            raise Invalid("field required: send the file in the multipart field 'file'",
                          loc=("body", "file"))
        # The checks read and parse the file: a few uploads at a time, so that one
        # owner's uploads cannot take every thread from the others' requests.
        accepted = await anyio.to_thread.run_sync(
            upload_intake.accept, session, settings, store, hold, form.file,
            form.fields.get("kind"), upload_id, key,
            limiter=_checks(request, settings.max_concurrent_checks))
    finally:
        await run_in_threadpool(upload_holds.release, session, hold)
    if accepted.replayed:
        mark_replayed(response)
    return upload_out(accepted.upload)


def _checks(request: Request, limit: int) -> anyio.CapacityLimiter:
    """The app's limiter of concurrent upload checks (made in the event loop, once)."""
    state = request.app.state
    if getattr(state, "upload_checks", None) is None:
        state.upload_checks = anyio.CapacityLimiter(limit)
    return state.upload_checks


@router.delete(
    "/{upload_id}",
    status_code=204,
    summary="Delete an upload and its file",
    responses={404: {"model": ErrorBody, "description": "No such upload."},
               409: {"model": ErrorBody, "description": "A queued or running job uses it."}},
)
def delete_upload(upload_id: str, session: SessionDep, settings: SettingsDep,
                  principal: PrincipalDep) -> Response:
    """Removes the upload and its file, freeing its bytes from the token's quota. While a
    queued or running job names it, a 409 names the job; a job submitted later that
    names it gets a 422."""
    upload = crud.get_upload(session, upload_id, owner=principal.owner_filter)
    users = crud.jobs_using_upload(session, upload_id)
    if users:
        raise Conflict(f"upload '{upload_id}' is used by {len(users)} queued or running "
                       f"job(s) ({', '.join(users[:3])}); cancel them or wait for them to end",
                       loc=("path", "upload_id"))
    folder, _, _ = upload.path.rpartition("/")
    session.delete(upload)
    session.commit()
    store = store_from_settings(settings, "uploads")
    if folder and "/" not in folder:  # `{upload id}/{name}`: its own folder
        store.delete_prefix(folder)
    else:
        store.delete(upload.path)
    log.info("deleted upload %s for '%s'", upload_id, principal.name)
    return Response(status_code=204)


@router.get("", response_model=UploadPage, summary="List uploads, newest first")
def list_uploads(
    session: SessionDep,
    principal: PrincipalDep,
    kind: Annotated[UploadKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> UploadPage:
    uploads, total = crud.list_uploads(session, kind=kind, limit=limit, offset=offset,
                                       owner=principal.owner_filter)
    following = next_page(PREFIX, {"kind": kind}, limit=limit, offset=offset,
                          shown=len(uploads), total=total)
    return UploadPage(items=[upload_out(u) for u in uploads], total=total, limit=limit,
                      offset=offset, next=following)


@router.get(
    "/{upload_id}",
    response_model=UploadOut,
    summary="An upload",
    responses={404: {"model": ErrorBody, "description": "No such upload."}},
)
def get_upload(upload_id: str, session: SessionDep, principal: PrincipalDep) -> UploadOut:
    return upload_out(crud.get_upload(session, upload_id, owner=principal.owner_filter))


@router.get(
    "/{upload_id}/layers",
    response_model=NetworkLayers,
    response_model_by_alias=True,
    summary="The layers of an uploaded network",
    responses={404: {"model": ErrorBody, "description": "No such upload."},
               422: {"model": ErrorBody, "description": "Not a network QUANTA can use."}},
)
def upload_layers(upload_id: str, session: SessionDep, settings: SettingsDep,
                  principal: PrincipalDep) -> NetworkLayers:
    """The layers of an uploaded `.keras` network a QUANTA layer can follow (`transferable`),
    and the others with the reason, in graph order: the names `source_model` jobs take
    in `layer_to_transfer` and `layers`. Read from the file's config and its weights'
    headers, as `quanta layers MODEL` does; nothing is built."""
    upload = crud.get_upload(session, upload_id, owner=principal.owner_filter)
    if upload.kind != "model":
        raise Invalid(f"upload '{upload_id}' is a {upload.kind} file; layers are listed for "
                      "a model (.keras)", loc=("path", "upload_id"))
    path = refs.upload_path(session, settings, UploadRef(upload=upload.id), "source_model",
                            principal.owner_filter)
    graph = refs.network_graph(path, settings)
    return NetworkLayers(kind=graph.kind, input_shape=list(graph.input_shape), head=graph.head,
                         params=graph.params,
                         layers=[NetworkLayer(**layer.as_dict()) for layer in graph.layers])
