"""Bearer tokens: every /v1 endpoint needs one (when tokens are configured), each token
sees only its own jobs and uploads unless it is an admin, revoked tokens are refused,
and `quanta-serve` refuses to serve an open API on a network address."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from tests.support import REPO
from tests.support.files import npz_bytes
from tests.support.jobs import TINY_SOURCE
from tests.support.net import free_port
from tests.support.processes import service_env

TOKENS = {
    "alice": "alice-secret-token-0001",
    "bob": "bob-secret-token-000002",
    "root": "root-secret-token-00003",
}
API_TOKENS = ("alice:alice-secret-token-0001, bob:bob-secret-token-000002,"
              "root:root-secret-token-00003:admin")


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture
def auth_app(settings: Any) -> Iterator[Any]:
    """The API with three env tokens (alice, bob, root the admin) and no database token."""
    from api.main import create_app

    app = create_app(settings.model_copy(update={"api_tokens": API_TOKENS}))
    with app.state.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_tokens"))
    yield app
    with app.state.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_tokens"))


@pytest.fixture
def api(auth_app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(auth_app) as client:
        yield client


def v1_requests(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every documented /v1 operation, path parameters filled in."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        if not path.startswith("/v1"):
            continue
        path = path.replace("{path}", "a/b.jsonl")
        while "{" in path:
            start = path.index("{")
            path = path[:start] + "0123abcd" + path[path.index("}", start) + 1:]
        found += [(method.upper(), path) for method in operations]
    return found


def test_every_v1_endpoint_needs_a_token(api: Any, auth_app: Any) -> None:
    requests = v1_requests(auth_app)
    assert len(requests) >= 10
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                    {"Authorization": f"Basic {TOKENS['alice']}"},
                    {"Authorization": "Bearer"}):
        for method, path in requests:
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]


def test_probes_stay_open(api: Any) -> None:
    assert api.get("/healthz").status_code == 200
    assert api.get("/readyz").status_code == 200


def test_openapi_documents_bearer_auth(api: Any) -> None:
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operation = schema["paths"]["/v1/jobs"]["post"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert "401" in operation["responses"]


def test_each_token_sees_only_its_own_jobs(api: Any, db: Any) -> None:
    from quanta_jobs.models import Job

    spec = {**TINY_SOURCE, "show_only_build": True}
    mine = api.post("/v1/jobs", json={"kind": "source", "spec": spec}, headers=auth("alice"))
    assert mine.status_code == 201, mine.text
    job_id = mine.json()["id"]
    assert db.get(Job, job_id).owner == "alice"
    theirs = api.post("/v1/jobs", json={"kind": "source", "spec": spec}, headers=auth("bob"))
    assert theirs.status_code == 201
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/artifacts",
                 f"/v1/jobs/{job_id}/archive", f"/v1/jobs/{job_id}/artifacts/x.jsonl"):
        response = api.get(path, headers=auth("bob"))
        assert response.status_code == 404, (path, response.text)
        assert job_id in response.text or path.endswith(".jsonl")
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=auth("bob")).status_code == 404
    assert api.get(f"/v1/jobs/{job_id}", headers=auth("alice")).status_code == 200
    listed = {j["id"] for j in api.get("/v1/jobs", headers=auth("bob")).json()["items"]}
    assert listed == {theirs.json()["id"]}
    page = api.get("/v1/jobs", headers=auth("root")).json()  # the admin sees everyone's
    assert {j["id"] for j in page["items"]} == {job_id, theirs.json()["id"]}
    assert page["total"] == 2
    assert api.get(f"/v1/jobs/{job_id}", headers=auth("root")).status_code == 200
    cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth("root"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_each_token_sees_only_its_own_uploads(api: Any) -> None:
    response = api.post("/v1/uploads", files={"file": ("d.npz", npz_bytes())},
                        headers=auth("alice"))
    assert response.status_code == 201, response.text
    upload_id = response.json()["id"]
    assert api.get(f"/v1/uploads/{upload_id}", headers=auth("bob")).status_code == 404
    assert api.get("/v1/uploads", headers=auth("bob")).json()["items"] == []
    assert api.get(f"/v1/uploads/{upload_id}", headers=auth("alice")).status_code == 200
    assert api.get(f"/v1/uploads/{upload_id}", headers=auth("root")).status_code == 200
    # referencing another owner's upload in a spec: as if it did not exist
    spec = {**TINY_SOURCE, "source_task": {"upload": upload_id}}
    refused = api.post("/v1/jobs", json={"kind": "source", "spec": spec}, headers=auth("bob"))
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "spec", "source_task", "upload"]
    accepted = api.post("/v1/jobs", json={"kind": "source", "spec": spec}, headers=auth("alice"))
    assert accepted.status_code == 201, accepted.text


def test_another_owners_source_job_cannot_be_referenced(api: Any, db: Any,
                                                         source_job: Any) -> None:
    source_job.owner = "alice"
    db.commit()
    spec = {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
            "source_weights": {"job": source_job.id}, "width_multiplier": 0.0625}
    body = {"kind": "transfer", "spec": spec}
    bob = api.post("/v1/jobs", json=body, headers=auth("bob"))
    assert bob.status_code == 422 and "no job with id" in bob.text
    assert api.post("/v1/jobs", json=body, headers=auth("alice")).status_code == 201


def test_database_tokens_and_revocation(api: Any, auth_app: Any) -> None:
    from quanta_jobs.tokens import create_token, revoke_tokens

    with auth_app.state.sessionmaker() as session:
        _, secret = create_token(session, "carol")
        _, admin_secret = create_token(session, "dave", admin=True)
        session.commit()
    carol = {"Authorization": f"Bearer {secret}"}
    spec = {**TINY_SOURCE, "show_only_build": True}
    created = api.post("/v1/jobs", json={"kind": "source", "spec": spec}, headers=carol)
    assert created.status_code == 201
    dave = {"Authorization": f"Bearer {admin_secret}"}
    assert api.get(f"/v1/jobs/{created.json()['id']}", headers=dave).status_code == 200
    with auth_app.state.sessionmaker() as session:
        assert revoke_tokens(session, "carol") == 1
        session.commit()
    refused = api.get("/v1/jobs", headers=carol)
    assert refused.status_code == 401 and refused.json()["detail"] == "invalid or revoked token"
    assert api.get("/v1/jobs", headers=dave).status_code == 200


def test_revoking_the_last_token_keeps_the_api_closed(settings: Any) -> None:
    """Only database tokens, all revoked: still 401, never an open API."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs.tokens import create_token, revoke_tokens

    app = create_app(settings)
    with app.state.sessionmaker() as session:
        session.execute(text("DELETE FROM api_tokens"))
        _, secret = create_token(session, "erin")
        session.commit()
    try:
        with TestClient(app) as client:
            assert client.get("/v1/jobs").status_code == 401
            headers = {"Authorization": f"Bearer {secret}"}
            assert client.get("/v1/jobs", headers=headers).status_code == 200
            with app.state.sessionmaker() as session:
                revoke_tokens(session, "erin")
                session.commit()
            assert client.get("/v1/jobs", headers=headers).status_code == 401
            assert client.get("/v1/jobs").status_code == 401
    finally:
        with app.state.engine.begin() as conn:
            conn.execute(text("DELETE FROM api_tokens"))


def test_without_tokens_the_api_is_open_and_anonymous(client: Any, db: Any) -> None:
    from quanta_jobs.models import Job

    response = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE})
    assert response.status_code == 201
    assert db.get(Job, response.json()["id"]).owner == ""


def test_env_tokens_are_parsed_strictly() -> None:
    from quanta_jobs.tokens import hash_token, parse_env_tokens

    tokens = parse_env_tokens(API_TOKENS)
    assert [(t.name, t.admin) for t in tokens] == [("alice", False), ("bob", False),
                                                   ("root", True)]
    assert tokens[0].digest == hash_token(TOKENS["alice"])
    assert parse_env_tokens(" , ") == []
    for bad, reason in (("alice", "expected name:token"), ("alice:short", "shorter than"),
                        ("a b:0123456789abcdefgh", "letters, digits"),
                        (":0123456789abcdefgh", "letters, digits")):
        with pytest.raises(ValueError, match=reason) as caught:
            parse_env_tokens(f"ok:0123456789abcdefgh,{bad}")
        assert "entry 2" in str(caught.value)
        assert "0123456789abcdefgh" not in str(caught.value)  # never print a secret


def test_token_match_compares_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: hmac.compare_digest on every known digest, no early exit."""
    import hmac

    from api import auth

    tokens = auth.parse_env_tokens(API_TOKENS)
    calls = []
    compare = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert auth.match(TOKENS["alice"], tokens) == tokens[0]
    assert len(calls) == 3
    assert auth.match("nope-nope-nope-nope", tokens) is None
    assert len(calls) == 6


def test_token_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from api import serve
    from quanta_jobs.settings import get_settings

    monkeypatch.setenv("QUANTA_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.setenv("QUANTA_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    get_settings.cache_clear()
    try:
        assert serve.main(["token", "create", "frank", "--admin"]) == 0
        out = capsys.readouterr()
        secret = out.out.strip()
        assert len(secret) >= 40 and "shown only once" in out.err
        assert serve.main(["token", "list"]) == 0
        listing = capsys.readouterr().out
        assert "frank" in listing and "yes" in listing and secret not in listing
        from api.auth import match
        from quanta_jobs.db import make_engine, make_sessionmaker
        from quanta_jobs.tokens import database_tokens

        engine = make_engine(get_settings().database_url)
        with make_sessionmaker(engine)() as session:
            found = match(secret, database_tokens(session))
            assert found is not None and found.admin and not found.revoked
        assert serve.main(["token", "revoke", "frank"]) == 0
        assert serve.main(["token", "revoke", "frank"]) == 1  # nothing left to revoke
        with make_sessionmaker(engine)() as session:
            found = match(secret, database_tokens(session))
            assert found is not None and found.revoked
        engine.dispose()
        assert serve.main(["token", "create", "bad name"]) == 2
    finally:
        get_settings.cache_clear()


def test_serve_checks_auth_before_listening(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from api.serve import check_auth
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'q.db'}",
                        artifacts_dir=tmp_path / "artifacts")
    upgrade(settings.database_url)
    with caplog.at_level("WARNING", logger="quanta.serve"):
        assert check_auth(settings, "127.0.0.1") is None
    assert "no API tokens configured" in caplog.text and "127.0.0.1 only" in caplog.text
    problem = check_auth(settings, "0.0.0.0")
    assert problem is not None and "refusing to serve on 0.0.0.0 without API tokens" in problem
    with_tokens = settings.model_copy(update={"api_tokens": API_TOKENS})
    assert check_auth(with_tokens, "0.0.0.0") is None
    malformed = settings.model_copy(update={"api_tokens": "x:short"})
    assert "shorter than" in (check_auth(malformed, "127.0.0.1") or "")


def test_quanta_serve_refuses_a_network_address_without_tokens(tmp_path: Path) -> None:
    """The real command: exit status 2 and a clear message, before listening."""
    port = free_port()
    env = service_env(database_url=f"sqlite:///{tmp_path / 'q.db'}",
                      broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                      artifacts_dir=tmp_path / "artifacts")
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "api.serve", "--host", "0.0.0.0", "--port", str(port),
         "--workers", "0"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "refusing to serve on 0.0.0.0 without API tokens" in done.stderr
    assert "QUANTA_API_TOKENS" in done.stderr
    assert time.monotonic() - began < 30


def test_compose_refuses_to_start_the_api_without_a_token() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    value = compose["services"]["api"]["environment"]["QUANTA_API_TOKENS"]
    assert value.startswith("${QUANTA_API_TOKENS:?") and "set QUANTA_API_TOKENS" in value
    assert "0.0.0.0" in compose["services"]["api"]["command"]  # hence the token
