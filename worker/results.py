"""Reading a finished job's results back from its files, for the statistics of a study.

The files are the seed's layout (`quanta_spec.file_names`); a study's child ran one run,
its run 0, which is run `study_run` of the study.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quanta_jobs.models import Job
from quanta_spec.file_names import run_file_names
from quanta_spec.files import atomic_write

if TYPE_CHECKING:
    from quanta.summary import RunRecord


#: Keras's model summary of a job, an artifact beside its files: its box drawing would
#: otherwise fill the job's JSON (tens of kilobytes of escaped characters).
MODEL_SUMMARY = "model_summary{}.txt"


def write_model_summaries(output: Path, summaries: dict[str, str] | None
                          ) -> str | dict[str, str] | None:
    """Write each model's summary as `model_summary_{name}.txt` (`model_summary.txt` for
    the name ""); the artifact path, or the paths by name, for the job's result."""
    paths: dict[str, str] = {}
    for name, text in (summaries or {}).items():
        if text:
            path = MODEL_SUMMARY.format(f"_{name}" if name else "")
            atomic_write(output / path, text.encode())
            paths[name] = path
    if not paths:
        return None
    return paths[""] if list(paths) == [""] else paths


def last_line(path: Path) -> dict[str, Any]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path.name} is empty")
    return json.loads(lines[-1])


def read_record(fetch: Callable[[str], Path], child: Job, entry: str, run: int
                ) -> RunRecord:
    """A child's run as the statistics want it, read from its JSONL files (in the folder
    its result names: a succeeded transfer job always records `experiment_dir`); `fetch`
    gives a local copy of one of the child's files by its path in the job."""
    from quanta.summary import RunRecord

    spec = child.spec
    experiment = (child.result or {})["experiment_dir"]
    names = run_file_names(0, entry)  # a child has one run, its run 0

    def read(name: str) -> dict[str, Any]:
        return last_line(fetch(f"{experiment}/{names[name]}"))

    return RunRecord(
        entry=entry,
        run=run,
        quantas=read("quantas"),
        target_metrics=read("target_testing"),
        witness_metrics=read("witness_testing") if spec.get("witness") else None,
    )


def task_name(task: Any) -> str:
    """A task as it appears in titles and folder names: its name, or `upload ID`."""
    if isinstance(task, dict):
        return f"upload-{task.get('upload', '?')[:8]}"
    return str(task)
