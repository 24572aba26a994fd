"""Bearer-token authentication, and who may see which jobs and uploads.

Tokens come from `QUANTA_API_TOKENS` (`name:token` or `name:token:admin`, comma-separated)
and from the `api_tokens` table, where they are stored as SHA-256 digests
(`quanta-serve token create NAME`). A request's token is hashed and compared with
EVERY known digest with `hmac.compare_digest`, so the time an answer takes says
nothing about how close a guess was, nor which token matched.

A token's name is the owner recorded on what it creates; it sees only its own jobs
and uploads (others' are 404, as if they did not exist) unless it is an admin token.
With no token configured anywhere the API is open and every request is the anonymous
admin `""`: `quanta-serve` allows that only on a loopback address. A revoked token
keeps authentication on, so revoking the last token never opens the API.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SessionDep
from api.errors import Unauthorized
from quanta_jobs.tokens import KnownToken, database_tokens, hash_token, parse_env_tokens

__all__ = ["ANONYMOUS", "Principal", "PrincipalDep", "authenticate", "match",
           "parse_env_tokens"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: `name` owns what they create; an admin sees everyone's."""

    name: str
    admin: bool

    @property
    def owner_filter(self) -> str | None:
        """The owner a query is restricted to, or None for an admin (everything)."""
        return None if self.admin else self.name


#: Every request when no token is configured (local use on a loopback address).
ANONYMOUS = Principal(name="", admin=True)


def match(token: str, known: list[KnownToken]) -> KnownToken | None:
    """The known token equal to `token`, comparing every digest in constant time."""
    digest = hash_token(token)
    found = None
    for candidate in known:  # no early exit: every request does the same work
        if hmac.compare_digest(digest, candidate.digest):
            found = candidate
    return found


bearer = HTTPBearer(
    auto_error=False,
    description="An API token: `Authorization: Bearer TOKEN` (required when the service "
    "has tokens configured).",
)


def authenticate(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The caller of a `/v1` request, or 401 (with `WWW-Authenticate: Bearer`)."""
    known = [*request.app.state.env_tokens, *database_tokens(session)]
    if not known:
        principal = ANONYMOUS
    else:
        if credentials is None or not credentials.credentials:
            raise Unauthorized("missing bearer token: send the header "
                               "'Authorization: Bearer TOKEN'")
        token = match(credentials.credentials, known)
        if token is None or token.revoked:
            raise Unauthorized("invalid or revoked token")
        principal = Principal(name=token.name, admin=token.admin)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
