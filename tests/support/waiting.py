"""Waiting on a condition, never on time: one bound, and a message saying what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Call `condition` until it returns something truthy, and return that; after `timeout`
    seconds fail saying `what` did not happen (a generous bound: a slow day is not a bug)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not so after {timeout:g} s")
        time.sleep(interval)
