"""Write a job's files in the seed's layout, as if the local command line had run.

A source or transfer job's artifacts already are that layout, relative to the output
folder (`{task}_training/...`, `{source}_to_{target}/..._r_{r}_l_{l}...`), so they are
written as they are; the service's extras (`plots/`) land beside them. A study is
the files of its children: each child ran one run (its files say `r_0`), which is run
`r` of the study, so its files are renamed to `_r_{r}_` — the folder then looks like
`quanta -l L -r N` run for each layer L into the same output folder. The study's own
`summary.json`, `summary.csv` and `plots/` go beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from quanta_client.api import Client, ClientError
from quanta_spec import file_names as seed_layout
from quanta_spec import layer_label


def safe_relative(path: str) -> PurePosixPath:
    """An artifact path, refused if it could escape the download folder."""
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in path or "\x00" in path:
        raise ClientError(f"refusing to write the artifact path '{path}'")
    return PurePosixPath(*parts)


def as_run(path: str, run: int) -> str:
    """A child's file name for run 0 renamed to the study's run `run`."""
    return seed_layout.as_run(path, run)


def child_plot(path: str, child: dict[str, Any]) -> str:
    """A child's `plots/quantas.png` under a name of its own in the study's folder."""
    return seed_layout.child_plot(int(child["study_run"]),
                                  layer_label(child["spec"]["layer_to_transfer"]))


def download_job(client: Client, job: dict[str, Any], folder: str | Path,
                 on_file: Callable[[Path], None] | None = None) -> list[Path]:
    """Every file of `job` (a study: of its children too) under `folder`; returns them."""
    folder = Path(folder)
    plan: list[tuple[str, dict[str, Any], str]] = []  # (job id, artifact, relative target)
    for artifact in client.artifacts(job["id"]):
        plan.append((job["id"], artifact, artifact["path"]))
    if job["kind"] == "study":
        for child in client.children(job["id"]):
            if child["status"] != "succeeded":
                continue
            for artifact in client.artifacts(child["id"]):
                path = artifact["path"]
                target = (child_plot(path, child) if path == seed_layout.TRANSFER_PLOT
                          else as_run(path, int(child["study_run"])))
                plan.append((child["id"], artifact, target))
    targets = [t for _, _, t in plan]
    if len(set(targets)) != len(targets):
        raise ClientError("two files of this job would land on the same path; download "
                          "its jobs one by one")
    written = []
    for job_id, artifact, target in plan:
        dest = folder.joinpath(*safe_relative(target).parts)
        written.append(client.download(job_id, artifact, dest))
        if on_file is not None:
            on_file(dest)
    return written
