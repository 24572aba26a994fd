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
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.deps import SessionDep
from api.errors import Unauthorized
from quanta_jobs.tokens import KnownToken, database_tokens, hash_token, parse_env_tokens

__all__ = ["ANONYMOUS", "Principal", "PrincipalDep", "authenticate", "identify", "match",
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


def identify(state: Any, session: Session, authorization: str | None) -> Principal:
    """The caller that `authorization` (the header's value) names, or `Unauthorized`.

    `state` is the app's state (its QUANTA_API_TOKENS); the stored tokens are read with
    `session`. Shared by the `authenticate` dependency and `api.body_limit`, which
    refuses a request without a valid token before reading its body.
    """
    known = [*state.env_tokens, *database_tokens(session)]
    if not known:
        return ANONYMOUS
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("missing bearer token: send the header "
                           "'Authorization: Bearer TOKEN'")
    token = match(secret, known)
    if token is None or token.revoked:
        raise Unauthorized("invalid or revoked token")
    return Principal(name=token.name, admin=token.admin)


def authenticate(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The caller of a `/v1` request, or 401 (with `WWW-Authenticate: Bearer`).

    A request with a body was already authenticated by `api.body_limit` (before its
    body was read): its principal is reused, the tokens are not read twice.
    """
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        header = (f"Bearer {credentials.credentials}" if credentials is not None
                  else None)
        principal = identify(request.app.state, session, header)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
