"""Requests that once got a 500 (an unhandled error) get a 4xx that says why: text that is
not Unicode, a Range bound of thousands of digits, a Last-Event-ID past the database's
integers; bodies Python cannot parse (integers of thousands of digits, deep nesting) get
the documented 400."""

from __future__ import annotations

from typing import Any

import pytest

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("body", [
    b'{"kind": "source", "spec": {"source_task": "\\ud800"}}',
    b'{"kind": "source", "spec": {"\\udfff": 1}}',
    b'{"kind": "\\ud800", "spec": {}}',
    b'{"kind": "transfer", "spec": {"source_task": "digits", "target_task": "digits", '
    b'"layer_to_transfer": 0, "source_weights": {"job": "x\\ud800"}}}',
])
def test_a_lone_surrogate_anywhere_is_a_422(client: Any, body: bytes) -> None:
    response = client.post("/v1/jobs", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    response.json()  # its echo of the input is JSON that encodes


def test_a_range_of_thousands_of_digits_is_answered(client: Any, finished_job: Any) -> None:
    job = finished_job("source", {"source_task": "digits"}, {"a.txt": b"0123456789"})
    path = f"/v1/jobs/{job.id}/artifacts/a.txt"
    past = client.get(path, headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert past.status_code == 416, past.text
    whole = client.get(path, headers={"Range": "bytes=2-" + "9" * 5000})
    assert (whole.status_code, whole.content) == (206, b"23456789")
    suffix = client.get(path, headers={"Range": "bytes=-" + "9" * 5000})
    assert suffix.content == b"0123456789"


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "9" * 5000])
def test_a_last_event_id_past_every_event_is_a_422(client: Any, finished_job: Any,
                                                   value: str) -> None:
    job = finished_job("source", {"source_task": "digits"})
    response = client.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": value})
    assert response.status_code == 422, response.text
    assert "Last-Event-ID must be at most" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("body", [
    b'{"kind": "source", "spec": {"nb_of_epochs": ' + b"9" * 5000 + b"}}",
    b'{"kind": "source", "spec": ' + b"[" * 5000 + b"]" * 5000 + b"}",
])
def test_bodies_python_cannot_parse_are_the_documented_400(client: Any, body: bytes) -> None:
    response = client.post("/v1/jobs", content=body, headers=JSON)
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


@pytest.mark.parametrize("protocol", [[], {}, ["kes2021"], 7])
def test_a_protocol_that_is_not_a_name_is_a_422(client: Any, protocol: Any) -> None:
    """The fuzzer sent `"protocol": []`: the preset lookup hashed the list (a 500)."""
    response = client.post("/v1/jobs", json={"kind": "study", "spec": {
        "source_task": "mnist", "target_task": "mnist", "source_weights": {"upload": "0"},
        "layers": [0], "protocol": protocol}})
    assert response.status_code == 422, response.text
    assert any(e["loc"][-1] == "protocol" or "protocol" in e["loc"]
               for e in response.json()["detail"]), response.text
