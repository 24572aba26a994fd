"""`quanta-serve token create|revoke|list`: API tokens stored hashed in the database.

A token is shown once, when it is created; the database keeps only its SHA-256, so
a copy of the database does not give access to the API. Several tokens may share a
name (rotate: create a new one, move the clients, revoke the old ones by id); the
name is the owner of what the token creates, so they share their jobs.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.auth import check_name, database_tokens, hash_token, parse_env_tokens
from api.db import make_engine, make_sessionmaker
from api.models import ApiToken, utcnow
from api.settings import Settings


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


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run `quanta-serve token ACTION` (the database is migrated by the caller)."""
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            if args.action == "create":
                try:
                    row, secret = create_token(session, args.name, admin=args.admin)
                except ValueError as exc:
                    print(f"quanta-serve token create: {exc}", file=sys.stderr)
                    return 2
                session.commit()
                kind = "admin token" if row.admin else "token"
                print(f"created {kind} '{row.name}' (id {row.id}); it is shown only once:",
                      file=sys.stderr)
                print(secret)
                return 0
            if args.action == "revoke":
                count = revoke_tokens(session, args.name)
                session.commit()
                if count == 0:
                    env_names = {t.name for t in parse_env_tokens(settings.api_tokens)}
                    hint = (" (it is in QUANTA_API_TOKENS: remove it there and restart)"
                            if args.name in env_names else "")
                    print(f"no active token named '{args.name}'{hint}", file=sys.stderr)
                    return 1
                print(f"revoked {count} token(s) '{args.name}'", file=sys.stderr)
                return 0
            rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at)).all()
            print(f"{'id':32}  {'name':24}  {'admin':5}  {'created':20}  revoked")
            for row in rows:
                revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if row.revoked_at else "-"
                print(f"{row.id:32}  {row.name:24}  {'yes' if row.admin else 'no':5}  "
                      f"{row.created_at:%Y-%m-%d %H:%M:%S}  {revoked}")
            for token in parse_env_tokens(settings.api_tokens):
                print(f"{'(QUANTA_API_TOKENS)':32}  {token.name:24}  "
                      f"{'yes' if token.admin else 'no':5}  {'-':20}  -")
            return 0
    finally:
        engine.dispose()
