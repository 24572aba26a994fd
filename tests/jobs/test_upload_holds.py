"""An upload's hold on the storage quota (`quanta_jobs.upload_holds`), on SQLite and
PostgreSQL: it covers what arrived, grows only where the quota leaves room, lapses when
not refreshed, and is turned into the upload's row."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from quanta_jobs import upload_holds
from quanta_jobs.errors import InsufficientStorage
from quanta_jobs.models import UploadHold, db_now

MB = 1_000_000


def holds(db: Any) -> int:
    return int(db.scalar(select(func.count()).select_from(UploadHold)))


def test_a_chunked_upload_grows_its_hold_within_the_quota(db: Any, settings: Any) -> None:
    settings.max_stored_bytes_per_owner = 10 * MB
    hold = upload_holds.take(db, settings, "alice", 0)
    upload_holds.grow(db, settings, hold, 5 * MB)
    assert hold.size >= 5 * MB  # a step ahead, so that the next megabytes need no update
    assert upload_holds.held_bytes(db, settings, "alice") == hold.size
    upload_holds.grow(db, settings, hold, 9_999_999)  # no room for a step: exactly this
    assert hold.size == 9_999_999
    with pytest.raises(InsufficientStorage, match="in progress"):
        upload_holds.take(db, settings, "alice", 2)  # another upload of the same owner
    upload_holds.take(db, settings, "bob", 10 * MB)  # another owner's quota is its own
    with pytest.raises(InsufficientStorage):
        upload_holds.grow(db, settings, hold, 10 * MB + 1)
    upload_holds.release(db, hold)
    assert upload_holds.held_bytes(db, settings, "alice") == 0


def test_a_lapsed_hold_stops_counting_and_is_checked_again_at_the_end(
        db: Any, settings: Any) -> None:
    settings.max_stored_bytes_per_owner = 10 * MB
    hold = upload_holds.take(db, settings, "alice", 8 * MB)
    db.execute(update(UploadHold).values(seen_at=db_now(settings.upload_hold_s + 60)))
    db.commit()
    assert upload_holds.held_bytes(db, settings, "alice") == 0
    other = upload_holds.take(db, settings, "alice", 6 * MB)  # the lapsed room is free
    with pytest.raises(InsufficientStorage):
        upload_holds.settle(db, settings, hold, 8 * MB)  # 6 + 8 > 10: checked again
    db.rollback()
    upload_holds.settle(db, settings, other, 6 * MB)
    db.commit()
    assert holds(db) == 1  # the lapsed one, until its API restarts or it is released


def test_a_restarted_api_frees_its_dead_processes_holds_and_files(db: Any, settings: Any,
                                                                 tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = 2**22 + 12345  # above pid_max's default: no such process
    live = os.getpid()
    for pid, where in ((dead, host), (live, host), (dead, "another-host.example")):
        db.add(UploadHold(owner="alice", size=MB, holder=f"{pid}@{where}"))
        (tmp_path / f".upload.{pid}@{where}.abc_123.partial").write_bytes(b"x")
    db.commit()
    assert upload_holds.free_orphans(db, tmp_path) == (1, 1)
    assert {p.name for p in tmp_path.iterdir()} == {
        f".upload.{dead}@another-host.example.abc_123.partial",
        f".upload.{live}@{host}.abc_123.partial"}
    assert set(db.scalars(select(UploadHold.holder))) == {
        f"{live}@{host}", f"{dead}@another-host.example"}
