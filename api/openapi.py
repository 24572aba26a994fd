"""The OpenAPI schema as client generators need it.

FastAPI's defaults made `create_job_v1_jobs_post`-style operation ids, filed the event
stream and the plots (which serve every job) under "studies", and gave the binary
downloads no schema, so a generated client could not read them. Operation ids are the
route functions' names in camelCase (`createJob`, `listJobs`, `downloadArchive`...).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

#: Operations that serve any job, filed under "jobs" whatever their router says.
JOB_OPERATIONS = frozenset({"getPlot", "jobEventsStream"})
BINARY = {"type": "string", "format": "binary"}
#: Download content types that carry bytes (JSON and text ones keep their own schema).
_TEXT = ("application/json", "text/event-stream")


def operation_id(route: APIRoute) -> str:
    """`create_job` -> `createJob`: short, stable names for generated clients."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _amend(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("operationId") in JOB_OPERATIONS:
                operation["tags"] = ["jobs"]
            for response in operation.get("responses", {}).values():
                for media, content in response.get("content", {}).items():
                    if media not in _TEXT and not content.get("schema"):
                        content["schema"] = dict(BINARY)
    return schema


def install(app: FastAPI) -> None:
    """Amend `app`'s schema once, when it is first built (create the app with
    `generate_unique_id_function=operation_id`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _amend(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
