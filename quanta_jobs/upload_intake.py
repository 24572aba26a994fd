"""What an upload checks once its bytes have arrived, and the order it checks it in: one
function below the HTTP layer, as `quanta_jobs.submissions` is for jobs.

The route streams the body to a partial file under the owner's hold on the storage
quota (`upload_holds`), then hands it to `accept`, which replays an `Idempotency-Key`
already used for the same file, tells the kind from the content (`upload_kinds`),
checks the file, gives it to the store under `{upload id}/{name}`, and records the
upload in the transaction that drops its hold. Whatever fails, nothing half-stored is
left: the received file and anything stored for it are removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quanta_jobs import crud, upload_holds
from quanta_jobs.errors import Invalid
from quanta_jobs.file_checks import FileLimits
from quanta_jobs.models import Upload
from quanta_jobs.settings import Settings
from quanta_jobs.store import ArtifactStore
from quanta_jobs.submissions import reused
from quanta_jobs.upload_kinds import KINDS, check, sniff_kind, stored_name

log = logging.getLogger(__name__)


class Received(Protocol):
    """A file as it arrived: where it lies, its client name, size, digest, first bytes."""

    filename: str
    path: Path
    size: int
    sha256: str
    head: bytes


@dataclass
class Accepted:
    upload: Upload
    replayed: bool  # the upload an earlier request with the same key created


def accept(session: Session, settings: Settings, store: ArtifactStore,
           hold: upload_holds.Hold, received: Received, declared_kind: str | None,
           upload_id: str, key: str | None = None) -> Accepted:
    """Check, store and record `received` for `hold.owner` (blocking: call it off the
    event loop, a few at a time); a replay keeps the first upload and drops this file."""
    owner = hold.owner
    try:
        first = _first(session, owner, key, received, declared_kind) if key else None
        if first is None:
            kind, stored = _settle(received, declared_kind, upload_id,
                                   FileLimits.from_settings(settings), store)
            filename = clean_name(received.filename) or stored.rsplit("/", 1)[-1]
            upload = _record(session, settings, hold, upload_id=upload_id, kind=kind,
                             filename=filename, path=stored, size=received.size,
                             sha256=received.sha256, owner=owner, idempotency_key=key)
            if upload is not None:
                log.info("upload %s: %s %s (%d bytes) by '%s'", upload.id, kind, filename,
                         received.size, owner)
                return Accepted(upload, replayed=False)
            assert key is not None  # a concurrent request with this key won the insert
            first = _first(session, owner, key, received, declared_kind)
            if first is None:
                raise RuntimeError(f"the upload with Idempotency-Key '{key}' vanished")
    except BaseException:
        discard(received.path, store, upload_id)
        raise
    discard(received.path, store, upload_id)  # a replay keeps the first
    return Accepted(first, replayed=True)


def _settle(received: Received, declared: str | None, upload_id: str,
            limits: FileLimits, store: ArtifactStore) -> tuple[str, str]:
    """Decide the kind, check the content, give the file to the store under its final
    key `{upload id}/{name}`; returns (kind, key)."""
    if declared is not None and declared not in KINDS:
        raise Invalid(f"unknown kind '{declared}'; use one of {', '.join(KINDS)}",
                      loc=("body", "kind"))
    kind = declared or sniff_kind(received.path, received.head, received.filename, limits)
    if kind is None:
        raise Invalid("cannot tell what this file is; upload a .weights.h5, .keras or .npz file, "
                      "a .zip of class folders of images, or pass kind", loc=("body", "file"))
    try:
        check(received.path, received.head, kind, limits)
    except ValueError as exc:
        raise Invalid(f"'{received.filename}' is not a valid {kind} file: {exc}",
                      loc=("body", "file")) from exc
    key = f"{upload_id}/{stored_name(kind, received.filename)}"
    store.put(key, received.path, consume=True)
    return kind, key


def clean_name(filename: str) -> str:
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


def _first(session: Session, owner: str, key: str, received: Received,
           declared: str | None) -> Upload | None:
    """The upload an earlier request with `key` created (422 if it was another file)."""
    first = crud.upload_by_idempotency_key(session, owner, key)
    if first is not None and (first.sha256 != received.sha256
                              or (declared is not None and declared != first.kind)):
        raise reused(key, "file")
    return first


def discard(received: Path, store: ArtifactStore, upload_id: str) -> None:
    """Remove a received file and anything stored for it."""
    received.unlink(missing_ok=True)
    try:
        store.delete_prefix(upload_id)
    except Exception:  # the request's own error matters more; a stray object costs bytes
        log.warning("upload %s: could not remove what was stored of it", upload_id,
                    exc_info=True)
