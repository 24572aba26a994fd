"""`quanta-serve token create|revoke|list`: the command line over the stored tokens.

The tokens themselves (hashing, storage, parsing QUANTA_API_TOKENS) are
`quanta_jobs.tokens`; this is only what `quanta-serve token` prints and returns.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import select

from quanta_jobs.db import make_engine, make_sessionmaker
from quanta_jobs.models import ApiToken
from quanta_jobs.settings import Settings
from quanta_jobs.tokens import create_token, parse_env_tokens, revoke_tokens


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
