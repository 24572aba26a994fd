"""What an upload holds against its owner's storage quota while it streams.

The quota counts what is stored (`quotas.stored_bytes`) plus the holds of the uploads
still arriving: an upload takes a hold before its first byte is read (the request's
`Content-Length`, or nothing for a chunked body), grows it as the bytes come when the
length was not declared, and turns it into its `Upload` row in the transaction that
records the file. Taking or growing a hold checks the quota under the owner's lock
(`owner_lock`), so 30 uploads at once cannot all fit in the same free room.

A hold names the API process receiving it (`pid@host`) and is refreshed while bytes
come. An API restarting on the same host frees the holds and removes the partial files
of its dead processes (`free_orphans`); a hold not refreshed for `upload_hold_s` (a
stalled client, a process that died on another host) stops counting, and its upload is
checked again, exactly, when it ends.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from quanta_jobs import quotas
from quanta_jobs.errors import InsufficientStorage
from quanta_jobs.models import UploadHold, db_now, new_id
from quanta_jobs.owner_lock import lock_owner
from quanta_jobs.settings import Settings
from quanta_spec.files import PARTIAL

#: A chunked upload's hold grows by at least this much at a time (fewer locked updates).
GROW_STEP = 8 * 1024 * 1024
#: The partial file of an upload: `.upload.PID@HOST.RANDOM.partial` (`partial_name`).
PARTIAL_UPLOAD = re.compile(r"^\.upload\.(\d+)@(.+)\.[^.@]+" + re.escape(PARTIAL) + "$")


def process_tag() -> str:
    """`pid@host` of this process (read each time: workers and servers fork)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def partial_name() -> str:
    """The name part of this process's partial uploads (`quanta_spec.files.partial_path`)."""
    return f"upload.{process_tag()}"


def _dead_here(pid: int, host: str) -> bool:
    """Whether `pid` on `host` is known dead: on this host and no such process (another
    host's processes cannot be seen from here)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Hold:
    """One upload's hold, as the request that took it knows it."""

    id: str
    owner: str
    size: int
    refreshed: float = field(default_factory=time.monotonic)


def held_bytes(session: Session, settings: Settings, owner: str,
               exclude: str | None = None) -> int:
    """Bytes `owner`'s live holds keep (all but `exclude`)."""
    query = (select(func.coalesce(func.sum(UploadHold.size), 0))
             .where(UploadHold.owner == owner,
                    UploadHold.seen_at >= db_now(settings.upload_hold_s)))
    if exclude is not None:
        query = query.where(UploadHold.id != exclude)
    return int(session.scalar(query) or 0)


def check_room(session: Session, settings: Settings, owner: str, adding: int,
               exclude: str | None = None) -> None:
    """507 unless `owner`'s files, its other live holds and `adding` fit in its quota.
    Call it under `lock_owner`."""
    quotas.check_storage(session, settings, owner, adding,
                         held=held_bytes(session, settings, owner, exclude))


def take(session: Session, settings: Settings, owner: str, size: int) -> Hold:
    """A hold of `size` bytes (507 when it does not fit), committed."""
    try:
        lock_owner(session, owner)
        check_room(session, settings, owner, size)
        row = UploadHold(id=new_id(), owner=owner, size=size, holder=process_tag(),
                         seen_at=db_now())  # the database's clock, as the expiry reads it
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Hold(id=row.id, owner=owner, size=size)


def due(settings: Settings, hold: Hold, received: int) -> bool:
    """Whether `hold` must grow to cover `received` bytes, or be refreshed (every quarter
    of `upload_hold_s`): most chunks of an upload need neither."""
    return received > hold.size or time.monotonic() - hold.refreshed > settings.upload_hold_s / 4


def grow(session: Session, settings: Settings, hold: Hold, received: int) -> None:
    """Make `hold` cover `received` bytes (507 when they do not fit), and refresh it."""
    if not due(settings, hold, received):
        return
    try:
        size = hold.size
        if received > hold.size:
            lock_owner(session, hold.owner)
            check_room(session, settings, hold.owner, received, exclude=hold.id)
            size = received + GROW_STEP
            try:  # a step beyond what arrived, where the quota leaves room for it
                check_room(session, settings, hold.owner, size, exclude=hold.id)
            except InsufficientStorage:
                size = received
        session.execute(update(UploadHold).where(UploadHold.id == hold.id)
                        .values(size=size, seen_at=db_now()))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    hold.size, hold.refreshed = size, time.monotonic()


def settle(session: Session, settings: Settings, hold: Hold, size: int) -> None:
    """In the transaction that records the upload (not committed here): check again if the
    hold lapsed, and drop it. Call it first in that transaction."""
    lock_owner(session, hold.owner)
    live = session.scalar(select(UploadHold.id).where(
        UploadHold.id == hold.id, UploadHold.seen_at >= db_now(settings.upload_hold_s)))
    if live is None or size > hold.size:
        check_room(session, settings, hold.owner, size, exclude=hold.id)
    session.execute(delete(UploadHold).where(UploadHold.id == hold.id))


def release(session: Session, hold: Hold) -> None:
    """Drop `hold` (an upload that failed or was a replay), committed."""
    try:
        session.execute(delete(UploadHold).where(UploadHold.id == hold.id))
        session.commit()
    except BaseException:
        session.rollback()
        raise


def free_orphans(session: Session, uploads_dir: Path) -> tuple[int, int]:
    """Drop the holds, and remove the partial upload files, of this host's dead API
    processes (at the API's start: a `kill -9` mid-upload left them); (holds, files)."""
    host = socket.gethostname()
    rows = session.execute(select(UploadHold.id, UploadHold.holder)
                           .where(UploadHold.holder.like(f"%@{host}"))).all()
    dead = [row.id for row in rows
            if row.holder.split("@", 1)[0].isdigit()
            and _dead_here(int(row.holder.split("@", 1)[0]), host)]
    if dead:
        session.execute(delete(UploadHold).where(UploadHold.id.in_(dead)))
    session.commit()
    files = 0
    if uploads_dir.is_dir():
        for path in uploads_dir.iterdir():
            match = PARTIAL_UPLOAD.match(path.name)
            if match and _dead_here(int(match.group(1)), match.group(2)) and path.is_file():
                path.unlink(missing_ok=True)
                files += 1
    return len(dead), files
