"""Property-based fuzzing of every documented operation: whatever the input, never a 5xx.

Schemathesis generates requests from the OpenAPI schema (valid and invalid ones), sends
them with an API token (authentication on, as in production), and checks that the API
answers each without a server error, with a documented status code, content type,
headers and body, and that the same request without its token is refused (401).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

TOKEN = "fuzz-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, ignored_auth]


@pytest.fixture
def fuzz_schema(tmp_path: Path) -> Any:
    from api.main import create_app
    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings

    config = Settings(database_url=f"sqlite:///{tmp_path / 'q.db'}",
                      broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}",
                      artifacts_dir=tmp_path / "artifacts", max_upload_bytes=4096,
                      migrate_on_start=False, requeue_interval_s=0,
                      api_tokens=f"fuzzer:{TOKEN}:admin")
    config.ensure_dirs()
    upgrade(config.database_url)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(config))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error(fuzz_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def no_5xx(case: Any) -> None:
            response = case.call(headers=AUTH)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=AUTH)

        try:
            no_5xx()
        except Unsatisfiable:  # nothing invalid to send (an operation without inputs)
            assert mode is GenerationMode.NEGATIVE
    if mode is GenerationMode.POSITIVE:  # every operation was exercised
        assert len(statuses) == len(operations), statuses
    else:
        assert {"POST /v1/jobs", "POST /v1/uploads", "GET /v1/jobs"} <= set(statuses), statuses
