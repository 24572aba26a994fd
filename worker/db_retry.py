"""Database calls of a worker that survive an outage of the database (or of the network).

A job trains for hours; the database may restart, fail over or drop connections
meanwhile. Losing it must not lose the training: status writes are retried with
exponential backoff on the errors of an unreachable server (`OperationalError`,
`InterfaceError`; a new session each time, and the pool's pre-ping replaces dead
connections). Each caller says how long it may wait: a progress write a few seconds
(the next epoch writes again), the final write of a finished job minutes
(`QUANTA_DB_RETRY_S`; its files are safe on disk meanwhile).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Errors of a server that is down, restarting or unreachable (or a SQLite file locked
#: for too long); anything else is a bug and is raised at once.
RETRYABLE = (OperationalError, InterfaceError)
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 10.0


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for the whole retry budget."""


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def retry_db(fn: Callable[[], T], *, what: str, budget_s: float,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, called again after 0.25 s, 0.5 s, 1 s... (at most 10 s apart) while it fails
    with a connection error, for at most `budget_s` seconds; then `DatabaseUnavailable`."""
    deadline = time.monotonic() + budget_s
    delay = FIRST_DELAY_S
    tries = 0
    while True:
        tries += 1
        try:
            result = fn()
        except RETRYABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"{what}: database unreachable after {tries} tries in {budget_s:.0f}s "
                    f"({_reason(exc)})") from exc
            wait = min(delay, left)
            log.warning("%s: database unreachable (%s); try %d again in %.2fs", what,
                        _reason(exc), tries + 1, wait)
            sleep(wait)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if tries > 1:
            log.info("%s: done after %d tries (the database is back)", what, tries)
        return result
