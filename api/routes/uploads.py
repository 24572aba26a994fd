"""Uploads: source weights (.weights.h5), saved models (.keras) and datasets (.npz)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api import crud
from api.deps import SessionDep, SettingsDep
from api.errors import Invalid
from api.models import Upload, new_id
from api.multipart import ReceivedFile, receive_upload
from api.schemas import MAX_OFFSET, ErrorBody, UploadKind, UploadOut, UploadPage
from api.upload_check import KINDS, check, sniff_kind, stored_name

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


def _settle(received: ReceivedFile, declared: str | None, folder: Path) -> tuple[str, Path]:
    """Decide the kind, check the content, move the file to its final name (in a thread)."""
    if declared is not None and declared not in KINDS:
        raise Invalid(f"unknown kind '{declared}'; use one of {', '.join(KINDS)}",
                      loc=("body", "kind"))
    kind = declared or sniff_kind(received.path, received.head, received.filename)
    if kind is None:
        raise Invalid("cannot tell what this file is; upload a .weights.h5, .keras or .npz file "
                      "or pass kind", loc=("body", "file"))
    try:
        check(received.path, received.head, kind)
    except ValueError as exc:
        raise Invalid(f"'{received.filename}' is not a valid {kind} file: {exc}",
                      loc=("body", "file")) from exc
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / stored_name(kind, received.filename)
    received.path.replace(final)
    return kind, final


def _record(session: Session, **fields: str | int) -> Upload:
    upload = crud.create_upload(session, **fields)  # type: ignore[arg-type]
    session.commit()
    return upload


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    summary="Upload weights, a model or a dataset",
    openapi_extra=UPLOAD_BODY,
    responses={
        413: {"model": ErrorBody, "description": "Larger than QUANTA_MAX_UPLOAD_BYTES."},
        422: {"model": ErrorBody, "description": "Not a valid file of its kind."},
    },
)
async def create_upload(request: Request, session: SessionDep, settings: SettingsDep) -> UploadOut:
    """Multipart form with the field `file` and optionally `kind` (weights, model, dataset).

    The content decides: weights must be HDF5, a model a zip holding config.json, a
    dataset an .npz with x_train, y_train, x_test, y_test (numeric, matching sizes).
    """
    upload_id = new_id()
    root = settings.uploads_path
    root.mkdir(parents=True, exist_ok=True)
    form = await receive_upload(request, root, settings.max_upload_bytes)
    if form.file is None:
        raise Invalid("field required: send the file in the multipart field 'file'",
                      loc=("body", "file"))
    received = form.file
    folder = root / upload_id
    try:
        kind, final = await run_in_threadpool(_settle, received, form.fields.get("kind"), folder)
        filename = Path(received.filename.replace("\\", "/")).name[:255] or final.name
        upload = await run_in_threadpool(
            _record, session, upload_id=upload_id, kind=kind, filename=filename,
            path=final.relative_to(root).as_posix(), size=received.size,
            sha256=received.sha256,
        )
    except BaseException:
        received.path.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("upload %s: %s %s (%d bytes)", upload.id, kind, filename, received.size)
    return upload_out(upload)


@router.get("", response_model=UploadPage, summary="List uploads, newest first")
def list_uploads(
    session: SessionDep,
    kind: Annotated[UploadKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> UploadPage:
    uploads, total = crud.list_uploads(session, kind=kind, limit=limit, offset=offset)
    following = None
    if offset + len(uploads) < total:
        query = ({"kind": kind} if kind else {}) | {"limit": limit, "offset": offset + limit}
        following = f"{PREFIX}?{urlencode(query)}"
    return UploadPage(items=[upload_out(u) for u in uploads], total=total, limit=limit,
                      offset=offset, next=following)


@router.get(
    "/{upload_id}",
    response_model=UploadOut,
    summary="An upload",
    responses={404: {"model": ErrorBody, "description": "No such upload."}},
)
def get_upload(upload_id: str, session: SessionDep) -> UploadOut:
    return upload_out(crud.get_upload(session, upload_id))
