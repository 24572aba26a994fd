"""The OpenAPI schema as client generators read it (fast checks; the generated client
itself runs against a live service in test_generated_client.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest


@pytest.fixture
def schema(app: Any) -> dict[str, Any]:
    return app.openapi()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in schema["paths"].items()
            for method, op in ops.items()]


def test_operation_ids_are_short_unique_camel_case(schema: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(schema)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z0-9]*)*", i) for i in ids), ids
    assert {"createJob", "listJobs", "getJob", "downloadArchive", "getPlot"} <= set(ids)


def test_events_and_plots_are_job_operations(schema: dict[str, Any]) -> None:
    tags = {op["operationId"]: op["tags"] for _, _, op in _operations(schema)}
    assert tags["jobEventsStream"] == tags["getPlot"] == ["jobs"]


def test_downloads_declare_binary_content(schema: dict[str, Any]) -> None:
    archive = schema["paths"]["/v1/jobs/{job_id}/archive"]["get"]["responses"]["200"]
    plot = schema["paths"]["/v1/jobs/{job_id}/plots/{name}.png"]["get"]["responses"]["200"]
    assert archive["content"]["application/zip"]["schema"]["format"] == "binary"
    assert plot["content"]["image/png"]["schema"]["format"] == "binary"


def test_one_task_name_schema_and_kind_with_a_default(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    assert components["TaskName"]["enum"] == ["cifar10", "cifar100", "mnist",
                                              "fashion_mnist", "digits"]
    text = str(components)
    assert text.count("'fashion_mnist'") == 1  # nowhere inline
    for name, kind in (("SourceJobCreate", "source"), ("TransferJobCreate", "transfer"),
                       ("StudyJobCreate", "study")):
        model = components[name]
        assert model["properties"]["kind"]["default"] == kind and "kind" in model["required"]


def test_spec_and_result_are_typed(schema: dict[str, Any]) -> None:
    job = schema["components"]["schemas"]["JobOut"]["properties"]
    refs = str(job["spec"]) + str(job["result"])
    for model in ("RemoteTransferSpec", "RemoteSourceSpec", "SourceResult", "TransferResult",
                  "StudyResult"):
        assert f"#/components/schemas/{model}'" in refs, model
    assert not [k for k in schema["components"]["schemas"] if k.endswith(("-Input", "-Output"))]


def test_a_job_is_sent_as_stored(client: Any, source_job: Any) -> None:
    """Typed for the schema, but never validated again: a stored spec or result comes back
    as it was written."""
    body = client.get(f"/v1/jobs/{source_job.id}").json()
    assert body["spec"]["source_task"] == "digits" and body["result"] is None
    assert client.post("/v1/jobs", json={"kind": "source", "spec": {
        "source_task": "digits", "width_multiplier": 0.0625}}).status_code == 201
