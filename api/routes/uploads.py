"""Uploads: source weights (.weights.h5), saved models (.keras) and datasets (.npz)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import PrincipalDep
from api.deps import SessionDep, SettingsDep
from api.idempotency import IdempotencyKey, check_key, mark_replayed, reused
from api.multipart import MULTIPART_OVERHEAD, ReceivedFile, receive_upload
from api.pagination import next_page
from api.schemas import MAX_OFFSET, ErrorBody, UploadKind, UploadOut, UploadPage
from api.upload_check import KINDS, check, sniff_kind, stored_name
from quanta_jobs import crud, upload_holds
from quanta_jobs.errors import Conflict, Invalid
from quanta_jobs.file_checks import FileLimits
from quanta_jobs.models import Upload, new_id
from quanta_jobs.settings import Settings
from quanta_jobs.store import ArtifactStore, store_from_settings, work_dir

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
                                 "description": ".weights.h5, .keras or .npz file."},
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


def _settle(received: ReceivedFile, declared: str | None, upload_id: str,
            limits: FileLimits, store: ArtifactStore) -> tuple[str, str]:
    """Decide the kind, check the content, give the file to the store under its final
    key `{upload id}/{name}` (in a thread); returns (kind, key)."""
    if declared is not None and declared not in KINDS:
        raise Invalid(f"unknown kind '{declared}'; use one of {', '.join(KINDS)}",
                      loc=("body", "kind"))
    kind = declared or sniff_kind(received.path, received.head, received.filename)
    if kind is None:
        raise Invalid("cannot tell what this file is; upload a .weights.h5, .keras or .npz file "
                      "or pass kind", loc=("body", "file"))
    try:
        check(received.path, received.head, kind, limits)
    except ValueError as exc:
        raise Invalid(f"'{received.filename}' is not a valid {kind} file: {exc}",
                      loc=("body", "file")) from exc
    key = f"{upload_id}/{stored_name(kind, received.filename)}"
    store.put(key, received.path, consume=True)
    return kind, key


def _clean_name(filename: str) -> str:
    """The client's file name, for display only: its last part, without control characters
    (PostgreSQL refuses NUL), at most 255 characters."""
    name = Path(filename.replace("\\", "/")).name
    return "".join(c for c in name if c.isprintable())[:255]


def _record(session: Session, settings: Settings, hold: upload_holds.Hold,
            **fields: str | int | None) -> Upload | None:
    """Insert the upload, and drop its hold, in one transaction; None when a concurrent
    request with its idempotency key won."""
    try:
        upload_holds.settle(session, settings, hold, int(fields["size"] or 0))
        upload = crud.create_upload(session, **fields)  # type: ignore[arg-type]
        session.commit()
    except IntegrityError:
        session.rollback()
        if fields.get("idempotency_key") is None:
            raise
        return None
    except BaseException:
        session.rollback()
        raise
    return upload


def _first(session: Session, owner: str, key: str, received: ReceivedFile,
           declared: str | None) -> Upload | None:
    """The upload an earlier request with `key` created (422 if it was another file)."""
    first = crud.upload_by_idempotency_key(session, owner, key)
    if first is not None and (first.sha256 != received.sha256
                              or (declared is not None and declared != first.kind)):
        raise reused(key, "file")
    return first


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
    """Multipart form with the field `file` and optionally `kind` (weights, model, dataset).

    The content decides: weights must be HDF5, a model a zip holding config.json, a
    dataset an .npz with x_train, y_train, x_test, y_test (numeric, matching sizes).
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
    received = None

    async def arriving(size: int) -> None:
        if upload_holds.due(settings, hold, size):
            await run_in_threadpool(upload_holds.grow, session, settings, hold, size)

    try:
        form = await receive_upload(request, root, settings.max_upload_bytes, arriving)
        if form.file is None:
            raise Invalid("field required: send the file in the multipart field 'file'",
                          loc=("body", "file"))
        received = form.file
        declared_kind = form.fields.get("kind")
        first = None
        if key is not None:
            first = await run_in_threadpool(_first, session, owner, key, received,
                                            declared_kind)
        if first is None:
            # The content checks read and parse the file: a few at a time, so that one
            # owner's uploads cannot take every thread from the others' requests.
            kind, stored = await anyio.to_thread.run_sync(
                _settle, received, declared_kind, upload_id, FileLimits.from_settings(settings),
                store, limiter=_checks(request, settings.max_concurrent_checks))
            filename = _clean_name(received.filename) or stored.rsplit("/", 1)[-1]
            upload = await run_in_threadpool(
                _record, session, settings, hold, upload_id=upload_id, kind=kind,
                filename=filename, path=stored, size=received.size,
                sha256=received.sha256, owner=owner, idempotency_key=key,
            )
            if upload is not None:
                log.info("upload %s: %s %s (%d bytes) by '%s'", upload.id, kind, filename,
                         received.size, owner)
                return upload_out(upload)
            assert key is not None  # a concurrent request with this key won the insert
            first = await run_in_threadpool(_first, session, owner, key, received,
                                            declared_kind)
            if first is None:
                raise RuntimeError(f"the upload with Idempotency-Key '{key}' vanished")
    except BaseException:
        if received is not None:
            await run_in_threadpool(_discard, received.path, store, upload_id)
        raise
    finally:
        await run_in_threadpool(upload_holds.release, session, hold)
    await run_in_threadpool(_discard, received.path, store, upload_id)  # a replay keeps the first
    mark_replayed(response)
    return upload_out(first)


def _checks(request: Request, limit: int) -> anyio.CapacityLimiter:
    """The app's limiter of concurrent upload checks (made in the event loop, once)."""
    state = request.app.state
    if getattr(state, "upload_checks", None) is None:
        state.upload_checks = anyio.CapacityLimiter(limit)
    return state.upload_checks


def _discard(received: Path, store: ArtifactStore, upload_id: str) -> None:
    """Removes a received file and anything stored for it (off the event loop: the file
    may be large, the store far)."""
    received.unlink(missing_ok=True)
    try:
        store.delete_prefix(upload_id)
    except Exception:  # the request's own error matters more; a stray object costs bytes
        log.warning("upload %s: could not remove what was stored of it", upload_id,
                    exc_info=True)


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
