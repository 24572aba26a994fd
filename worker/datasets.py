"""The data folder a job reads built-in tasks from, filled from the store when it is a bucket.

A worker on a host of its own cannot download datasets when the GPU hosts have no way
out, and should not download them once per host when they do: a lab puts the official
files in the bucket's `datasets/` folder once (`aws s3 cp cifar-10-python.tar.gz
s3://bucket/prefix/datasets/`), and each worker fetches those its job needs into its
local data folder, each checked against the SHA-256 the store recorded. The library then
finds them where it always looks (and checks them against the official digests). With
the local store the data folder is the store: nothing is copied.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quanta_jobs.settings import Settings
from quanta_jobs.store import KeyNotFound, local_area_dir, store_from_settings

log = logging.getLogger(__name__)


def fetch_for(settings: Settings, spec: Any) -> Path | None:
    """The `data_dir` to hand the library for `spec`, after fetching from the bucket the
    built-in tasks' files this host lacks. Never fails: a file that cannot be fetched is
    reported by the library, which names it and says where to put it."""
    store = store_from_settings(settings, "datasets")
    folder = local_area_dir(settings, "datasets")
    if store.local_dir("") is not None:
        return settings.data_dir
    from quanta.datasets import task_files  # TensorFlow-free, but the library's own table

    tasks = {getattr(spec, name, None) for name in ("source_task", "target_task")}
    for task in sorted(t for t in tasks if isinstance(t, str)):
        for names in task_files(task):
            if any((folder / name).is_file() for name in names):
                continue
            for name in names:
                try:
                    store.fetch_to(name, folder / name)
                    log.info("fetched dataset file %s from %s", name, store.url(name))
                    break
                except KeyNotFound:
                    continue
                except Exception as exc:
                    log.warning("dataset file %s not fetched from %s (%s)", name,
                                store.url(name), exc)
                    break
    return folder
