"""API tokens stored hashed in the database (managed with `quanta-serve token`).

A token is shown once, when it is created; the database keeps only its SHA-256, so
a copy of the database does not give access to the API. Several tokens may share a
name (rotate: create a new one, move the clients, revoke the old ones by id); the
name is the owner of what the token creates, so they share their jobs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from quanta_jobs.models import ApiToken, utcnow
from quanta_jobs.settings import Settings

#: Token names become owners (`jobs.owner` is 64 characters) and appear in logs.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: Shorter secrets can be guessed; generated ones are 43 characters.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class KnownToken:
    name: str
    digest: str
    admin: bool
    revoked: bool = False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"token name '{name[:80]}' must be 1 to 64 letters, digits or _.@-")
    return name


def parse_env_tokens(value: str) -> list[KnownToken]:
    """The tokens of `QUANTA_API_TOKENS`; ValueError naming the bad entry (never its secret)."""
    tokens = []
    for index, raw in enumerate((e.strip() for e in value.split(",")), start=1):
        if not raw:
            continue
        name, _, secret = raw.partition(":")
        admin = secret.endswith(":admin")
        secret = secret.removesuffix(":admin")
        where = f"QUANTA_API_TOKENS entry {index} ('{name[:64]}')"
        if not secret:
            raise ValueError(f"{where}: expected name:token or name:token:admin")
        try:
            check_name(name)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: the token is shorter than {MIN_TOKEN_LENGTH} "
                             "characters; generate one with `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'`")
        tokens.append(KnownToken(name=name, digest=hash_token(secret), admin=admin))
    return tokens


def database_tokens(session: Session) -> list[KnownToken]:
    rows = session.execute(
        select(ApiToken.name, ApiToken.token_hash, ApiToken.admin, ApiToken.revoked_at)
    ).all()
    return [KnownToken(name, digest, bool(admin), revoked_at is not None)
            for name, digest, admin, revoked_at in rows]


def new_token() -> str:
    """43 URL-safe characters (256 random bits)."""
    return secrets.token_urlsafe(32)


def create_token(session: Session, name: str, *, admin: bool = False) -> tuple[ApiToken, str]:
    """Store a new token for `name`; returns the row and the secret (its only copy)."""
    check_name(name)
    secret = new_token()
    row = ApiToken(name=name, token_hash=hash_token(secret), admin=admin)
    session.add(row)
    session.flush()
    return row, secret


def revoke_tokens(session: Session, name_or_id: str) -> int:
    """Revoke every active token named `name_or_id` (or with that id); returns how many."""
    result = session.execute(
        update(ApiToken)
        .where((ApiToken.name == name_or_id) | (ApiToken.id == name_or_id),
               ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def tokens_configured(settings: Settings, session: Session) -> bool:
    """True when requests need a token: some in QUANTA_API_TOKENS or in the database."""
    return bool(parse_env_tokens(settings.api_tokens)) or bool(database_tokens(session))
