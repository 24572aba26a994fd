"""What the worker's job hooks and the end of a study need from the worker process.

A small object instead of the `JobRunner`, so that `worker.hooks`, `worker.study_end`
and the others never import the runner (the runner imports them).
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from quanta_jobs.settings import Settings


@dataclass(frozen=True)
class JobContext:
    """The settings and database sessions of one worker process."""

    settings: Settings
    sessions: sessionmaker[Session]
    #: Where jobs a hook creates (a study's next runs) are sent; None: the sweeper sends them.
    celery: Celery | None = None

    def redact(self, message: str) -> str:
        """Server folders in a message become `uploads/`, `artifacts/`, `data/` (the
        worker's cache of a bucket too): clients name files by id and have no business
        knowing the server's layout."""
        folders = [(self.settings.uploads_path, "uploads"),
                   (self.settings.artifacts_dir, "artifacts"),
                   (self.settings.store_cache_path / "work" / "artifacts", "artifacts"),
                   (self.settings.store_cache_path / "artifacts", "artifacts"),
                   (self.settings.store_cache_path / "uploads", "uploads"),
                   (self.settings.store_cache_path, "cache")]
        if self.settings.data_dir is not None:
            folders.append((self.settings.data_dir, "data"))
        for folder, name in sorted(folders, key=lambda f: -len(str(f[0]))):
            message = message.replace(str(folder), name)
        return message
