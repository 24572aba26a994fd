"""The job service's domain errors: what is wrong with a request, in the caller's terms.

The job store raises these (an unknown job, a reference to a job that has not
succeeded, a number out of range) so that the API and the workers share one set of
rules; `api.errors` maps each kind to its HTTP status. `loc` names the field at
fault, so that every 4xx body has the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    """A problem with the caller's request; the subclass says which kind."""

    error_type = "bad_request"

    def __init__(self, message: str, *, loc: Sequence[str | int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = tuple(loc) if loc is not None else None

    def detail(self) -> Any:
        """FastAPI-style `detail`: a list with `loc` when a field is at fault, else a string."""
        if self.loc is None:
            return self.message
        return [{"loc": list(self.loc), "msg": self.message, "type": self.error_type}]


class NotFound(ServiceError):
    error_type = "not_found"


class Conflict(ServiceError):
    """The request is valid but the current state of a job forbids it."""

    error_type = "conflict"


class Invalid(ServiceError):
    error_type = "value_error"


class TooLarge(ServiceError):
    error_type = "too_large"


class InsufficientStorage(ServiceError):
    """An owner's stored bytes (uploads and job files) are over its quota."""

    error_type = "insufficient_storage"


class TooManyRequests(ServiceError):
    """A quota is reached (queued jobs of one token); retrying later may succeed."""

    error_type = "too_many_requests"
