"""The service's own errors, each mapped to one HTTP status by `api.main`.

Code below the routes raises these instead of `HTTPException` so that it stays
usable from the worker, and so that every 4xx body has the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class ServiceError(Exception):
    """A problem with the client's request; `status_code` says which kind."""

    status_code = 400
    error_type = "bad_request"
    #: Extra response headers (WWW-Authenticate of a 401, Retry-After of a 429).
    headers: ClassVar[dict[str, str] | None] = None

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
    status_code = 404
    error_type = "not_found"


class Conflict(ServiceError):
    """The request is valid but the current state of a job forbids it."""

    status_code = 409
    error_type = "conflict"


class Invalid(ServiceError):
    status_code = 422
    error_type = "value_error"


class TooLarge(ServiceError):
    status_code = 413
    error_type = "too_large"


class Unauthorized(ServiceError):
    """No bearer token, or one the service does not know (or revoked)."""

    status_code = 401
    error_type = "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class TooManyRequests(ServiceError):
    """A quota is reached (queued jobs of one token); retrying later may succeed."""

    status_code = 429
    error_type = "too_many_requests"
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "60"}
