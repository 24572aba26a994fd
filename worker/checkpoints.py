"""What a job has done so far, on disk: `CHECKPOINTS_DIR/{job id}/`, outside its artifacts.

The library saves every run there after each epoch (`checkpoint_dir=`), so a job whose
worker was killed, or stopped by SIGTERM, resumes on any worker from its last finished
epoch, with the same files in the end. The folder is kept out of the artifacts so that
it is never listed or downloaded, and it is shared by the workers like the artifacts.

A finished attempt also leaves its outcome here (`outcome.json`) until the database has
recorded it: if the database stays down longer than the worker retries, the next
attempt records that outcome instead of training again. The folder goes away when the
job's end is recorded.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from quanta_jobs.settings import Settings
from quanta_spec.files import atomic_write

log = logging.getLogger(__name__)
OUTCOME = "outcome.json"


def folder(settings: Settings, job_id: str) -> Path:
    return settings.checkpoints_path / job_id


def has_state(path: Path) -> bool:
    """True when an earlier attempt left something to resume from (or to record)."""
    return path.is_dir() and any(path.iterdir())


def describe(path: Path) -> str:
    """Where each run of an earlier attempt stopped, for the log (best effort: it reads
    the library's `state.json` files and never fails)."""
    if (path / OUTCOME).is_file():
        return "finished, not yet recorded"
    parts = []
    for state_file in sorted(path.glob("*/state.json")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("exported"):
            parts.append(f"{state_file.parent.name} done")
        else:
            parts.append(f"{state_file.parent.name} after epoch {len(state.get('history') or {})}")
    return ", ".join(parts) or "no finished epoch"


def save_outcome(path: Path, status: str, fields: dict[str, Any]) -> None:
    """Write the outcome atomically (a crash leaves the old file or none, never half)."""
    atomic_write(path / OUTCOME, json.dumps({"status": status, "fields": fields}))


def load_outcome(path: Path) -> tuple[str, dict[str, Any]] | None:
    try:
        saved = json.loads((path / OUTCOME).read_text())
        return str(saved["status"]), dict(saved["fields"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unreadable %s in %s; ignored", OUTCOME, path)
        return None


def discard(path: Path) -> None:
    """Remove a job's checkpoints once its end is recorded (nothing left to resume)."""
    shutil.rmtree(path, ignore_errors=True)
