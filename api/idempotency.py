"""`Idempotency-Key`: a retried POST returns what the first one created, never a second one.

A client that lost the answer to `POST /v1/jobs` (a timeout, a dropped connection)
cannot know whether the job was created; with the same key its retry gets the first
job back (`200`, header `Idempotent-Replayed: true`) instead of a duplicate hour of GPU.
The key is stored on the row with UNIQUE(owner, key): of two requests racing with one
key the database lets one insert win, and the loser (IntegrityError) reads the
winner's row. A key reused for a different request is a client bug: 422.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Header, Response

from quanta_jobs.errors import Invalid
from quanta_jobs.submissions import HEADER, LOC

REPLAYED_HEADER = "Idempotent-Replayed"
#: Visible ASCII, up to the column's 255 characters (a UUID is typical).
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Any unique string (a UUID): retrying with the same key returns the first "
        "result instead of creating a second one.",
    ),
]


def check_key(key: str | None) -> str | None:
    """The key, or None when absent; 422 if it is not 1-255 visible ASCII characters."""
    if key is None:
        return None
    if not KEY_PATTERN.match(key):
        raise Invalid("Idempotency-Key must be 1 to 255 visible ASCII characters",
                      loc=LOC)
    return key


def mark_replayed(response: Response) -> None:
    """A replay answers 200 (nothing was created) and says so in a header."""
    response.status_code = 200
    response.headers[REPLAYED_HEADER] = "true"
