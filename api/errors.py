"""Domain errors to HTTP: the status and headers of each `quanta_jobs.errors` kind.

Code below the routes raises the domain errors instead of `HTTPException`, so that it
stays usable from the worker; `api.main` answers each with `http_status` and
`http_headers`. `Unauthorized` is HTTP's own (a missing or unknown bearer token).
"""

from __future__ import annotations

from typing import Any

from quanta_jobs.errors import (
    Conflict,
    InsufficientStorage,
    Invalid,
    NotFound,
    ServiceError,
    TooLarge,
    TooManyRequests,
)


class Unauthorized(ServiceError):
    """No bearer token, or one the service does not know (or revoked)."""

    error_type = "unauthorized"


class Forbidden(ServiceError):
    """A known token without the right (an admin's route)."""

    error_type = "forbidden"


#: The HTTP status of each kind of error (a subclass takes its closest ancestor's).
STATUS: dict[type[ServiceError], int] = {
    ServiceError: 400,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    TooLarge: 413,
    Unauthorized: 401,
    Forbidden: 403,
    TooManyRequests: 429,
    InsufficientStorage: 507,
}
#: Extra response headers (WWW-Authenticate of a 401, Retry-After of a 429).
HEADERS: dict[type[ServiceError], dict[str, str]] = {
    Unauthorized: {"WWW-Authenticate": "Bearer"},
    TooManyRequests: {"Retry-After": "60"},
}


def _closest(table: dict[type[ServiceError], Any], exc: ServiceError) -> type[ServiceError] | None:
    return next((kind for kind in type(exc).__mro__ if kind in table), None)


def http_status(exc: ServiceError) -> int:
    """The status code that answers `exc`."""
    kind = _closest(STATUS, exc)
    return STATUS[kind] if kind is not None else 400


def http_headers(exc: ServiceError) -> dict[str, str] | None:
    """The extra headers that go with `exc`'s answer, if any."""
    kind = _closest(HEADERS, exc)
    return HEADERS[kind] if kind is not None else None
