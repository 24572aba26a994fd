"""What a job has done so far: the checkpoints store's `{job id}/{attempt}/`.

The library saves every run in the attempt's checkpoint folder after each epoch
(`checkpoint_dir=`), so a job whose worker was killed, stopped by SIGTERM, or cut off
from the database resumes on any worker from its last finished epoch, with the same
files in the end. The folder is kept out of the artifacts so that it is never listed or
downloaded. With a bucket as the store, the worker pushes it (and the outputs written so
far) after every epoch (`quanta_jobs.attempts.AttemptFiles`), and a worker on another
host fetches it from there: nothing is shared but the network.

Each attempt has its own checkpoints and outputs (`quanta_jobs.attempts`): an attempt
that resumes copies those of the latest earlier attempt that left any, and then writes
only its own, so a worker that still runs an attempt it lost never touches the files of
the one that replaced it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from quanta_jobs import attempts
from quanta_jobs.settings import Settings

log = logging.getLogger(__name__)
STATE = "state.json"
#: Where the attempt that wrote the checkpoints wrote its outputs (see `_mark`).
WRITTEN_IN = "attempt.json"


def describe(path: Path) -> str:
    """Where each run of an earlier attempt stopped, for the log (best effort: it reads
    the library's `state.json` files and never fails)."""
    parts = []
    for state_file in sorted(path.glob(f"*/{STATE}")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("exported"):
            parts.append(f"{state_file.parent.name} done")
        else:
            parts.append(f"{state_file.parent.name} after epoch {len(state.get('history') or {})}")
    return ", ".join(parts) or "no finished epoch"


def _moved(value: Any, old: str, new: str) -> Any:
    """`value` with every string under folder `old` moved under `new` (the library's
    journal and export records name the output files by absolute path)."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    if isinstance(value, dict):
        return {_moved(k, old, new): _moved(v, old, new) for k, v in value.items()}
    return value


def prepare(settings: Settings, job_id: str, attempt: int) -> int | None:
    """Give `attempt` its own, empty or resumed, output and checkpoint folders; returns
    the earlier attempt it resumes (None: it starts afresh).

    The earlier attempt's files are copied from the store, each checked against its
    SHA-256, never moved: its worker may still be alive (frozen, or cut off from the
    database) and must not write into ours. Raises OSError when the copy fails (a full
    disk), `StoreError` or the bucket's error when the store cannot be read."""
    output = attempts.output_dir(settings, job_id, attempt)
    saved = attempts.checkpoint_dir(settings, job_id, attempt)
    attempts.discard(settings, job_id, attempt)  # a leftover of a crash in this very call
    outputs, checkpoints = attempts.artifacts_store(settings), attempts.checkpoints_store(settings)
    for previous in attempts.earlier(settings, job_id, attempt):
        prefix = attempts.checkpoint_prefix(job_id, previous)
        if not any(info.key.endswith("/" + STATE) for info in checkpoints.list(prefix)):
            continue
        checkpoints.fetch_tree(prefix, saved)
        log.info("job %s: resuming an earlier attempt (%s) from attempt %d", job_id,
                 describe(saved), previous)
        outputs.fetch_tree(attempts.output_prefix(job_id, previous), output)
        before = _written_in(saved) or str(attempts.output_dir(settings, job_id, previous))
        for state_file in saved.glob(f"*/{STATE}"):
            state = json.loads(state_file.read_text())
            state_file.write_text(json.dumps(_moved(state, before, str(output))))
        _mark(saved, output)
        output.mkdir(parents=True, exist_ok=True)
        return previous
    _mark(saved, output)
    output.mkdir(parents=True, exist_ok=True)
    return None


def _mark(saved: Path, output: Path) -> None:
    """Note in the checkpoints where this attempt writes its outputs: the library's
    records name them by absolute path, and the host that resumes it has other paths."""
    saved.mkdir(parents=True, exist_ok=True)
    (saved / WRITTEN_IN).write_text(json.dumps({"output": str(output)}))


def _written_in(saved: Path) -> str | None:
    try:
        return str(json.loads((saved / WRITTEN_IN).read_text())["output"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
