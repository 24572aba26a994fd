"""A job's JSON and its downloads as people read them: short results, references as given,
clear errors, HEAD like GET, no empty archive."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import REPO

TRANSFER = {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
            "width_multiplier": 0.0625}


def test_a_server_path_as_source_weights_gets_one_clear_error(client: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": {
        **TRANSFER, "source_weights": "/srv/models/source.weights.h5"}})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == ["body", "transfer", "spec", "source_weights"]
    assert 'name files by {"job": ID} or {"upload": ID}' in errors[0]["msg"]


def test_the_error_loc_in_the_docs_is_what_the_api_returns(client: Any) -> None:
    """docs/service.md shows the `loc` of a bad layer_to_transfer: the same as here."""

    doc = (REPO / "docs" / "service.md").read_text()
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": {
        **TRANSFER, "layer_to_transfer": 9, "source_weights": {"job": "x"}}})
    assert response.status_code == 422
    loc = response.json()["detail"][0]["loc"]
    assert loc == ["body", "transfer", "spec", "layer_to_transfer"]
    assert '"loc": ' + str(loc).replace("'", '"') in doc


def test_a_source_reference_is_echoed_as_given(client: Any, source_job: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": {
        **TRANSFER, "source_weights": {"job": source_job.id}}})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["source_weights"] == {"job": source_job.id}


def test_a_cancelled_job_without_files_has_no_archive(client: Any, finished_job: Any) -> None:
    job = finished_job("transfer", {"layer_to_transfer": 0}, status="cancelled")
    response = client.get(f"/v1/jobs/{job.id}/archive")
    assert response.status_code == 409
    assert "cancelled" in response.json()["detail"] and "nothing" in response.json()["detail"]


@pytest.fixture
def plotted(finished_job: Any) -> Any:
    return finished_job("transfer", {"layer_to_transfer": 0}, {
        "digits_to_digits/quantas_r_0_l_0.jsonl": b'{"0": {}}\n',
        "plots/quantas.png": b"\x89PNG\r\n\x1a\n" + b"0" * 64,
    })


@pytest.mark.parametrize("path", ["artifacts/digits_to_digits/quantas_r_0_l_0.jsonl",
                                  "archive", "plots/quantas.png"])
def test_head_answers_like_get_without_a_body(client: Any, plotted: Any, path: str) -> None:
    url = f"/v1/jobs/{plotted.id}/{path}"
    got, head = client.get(url), client.head(url)
    assert got.status_code == head.status_code == 200
    assert head.content == b"" and got.content
    for name in ("content-type", "etag", "content-disposition", "content-length"):
        assert head.headers.get(name) == got.headers.get(name), name
    assert client.head(f"/v1/jobs/{plotted.id}/plots/nope.png").status_code == 404
    assert client.head("/v1/jobs/nope/archive").status_code == 404
