"""What a job is and which statuses it goes through, shared by the service and its client.

Free of the database and of HTTP: the job store (`quanta_jobs`), the API's schemas and
the client all name kinds and statuses through these enums, so a new status or kind is
added in one place. Both are `StrEnum`s: they compare equal to the strings stored in the
database and sent over HTTP.
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    SOURCE = "source"
    TRANSFER = "transfer"
    #: Runs on no worker: its children (transfer jobs) do.
    STUDY = "study"
    #: Baseline transferability scores of a frozen source: one inference pass, no training.
    SCORES = "scores"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """An ended job: its status never changes again."""
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
#: Statuses of a job that has not ended.
ACTIVE: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)


def is_terminal(status: str) -> bool:
    """True for the status (a string, as stored or sent) of an ended job."""
    return status in TERMINAL
