"""Studies compared: `GET /v1/studies/compare`, its plot, and `quanta-client compare`.

The studies are arranged as a worker leaves them (a `summary.json` among their files, or
children with results for an unfinished one); the statistics are checked against SciPy.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import update

from tests.support.files import png_size
from tests.support.jobs import TINY_SOURCE

SPEC = {"source_task": "digits", "target_task": "digits", "source_weights": {"job": "s"},
        "layers": [0, 6], "nb_of_runs": 4, "nb_of_target_epochs": 3}


def summary(values: dict[str, list[float]], all_at_once: list[float] | None = None
            ) -> dict[str, Any]:
    """A summary.json with the final λ_s `values` per layer, and a curve of 4 epochs."""
    entries: dict[str, Any] = {}
    for layer, finals in values.items():
        curve = [0.9, 0.8, 0.75, float(np.mean(finals))]
        entries[layer] = {"runs": list(range(len(finals))),
                          "lambda_s": {layer: {"n": len(finals), "values": finals}},
                          "lambda_s_per_epoch": {layer: curve}}
    if all_at_once is not None:
        entries["all"] = {"runs": [0, 1],
                          "lambda_s": {k: {"n": 2, "values": all_at_once} for k in ("0", "6")},
                          "lambda_s_per_epoch": {}}
    return {"entries": entries, "missing": [], "complete": True}


@pytest.fixture
def studies(finished_job: Any) -> dict[str, Any]:
    a = {"0": [0.61, 0.64, 0.60, 0.66], "6": [0.30, 0.31, 0.29, 0.33]}
    b = {"0": [0.70, 0.72, 0.69, 0.74], "6": [0.30, 0.32, 0.30, 0.31]}
    made = {}
    for name, values in (("a", a), ("b", b)):
        job = finished_job("study", SPEC, {"summary.json": json.dumps(summary(values)).encode()})
        made[name] = (job, values)
    return made


def test_compare_puts_layers_side_by_side_with_welch_tests(client: Any, studies: Any) -> None:
    (a, a_values), (b, b_values) = studies["a"], studies["b"]
    response = client.get("/v1/studies/compare", params={"ids": f"{a.id},{b.id}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["id"] for s in body["studies"]] == [a.id, b.id] and body["reference"] == a.id
    assert set(body["entries"]) == {"0", "6"}
    for layer in ("0", "6"):
        cell = body["entries"][layer][layer]
        x, y = a_values[layer], b_values[layer]
        assert cell["studies"][a.id]["values"] == x and cell["studies"][b.id]["n"] == 4
        assert cell["studies"][a.id]["mean"] == pytest.approx(np.mean(x))
        assert cell["studies"][b.id]["std"] == pytest.approx(np.std(y, ddof=1))
        half = stats.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
        assert cell["studies"][a.id]["ci95"] == pytest.approx([np.mean(x) - half,
                                                               np.mean(x) + half])
        assert cell["studies"][a.id]["curve"][-1] == pytest.approx(np.mean(x))
        (comparison,) = cell["comparisons"]
        assert (comparison["a"], comparison["b"]) == (a.id, b.id)
        assert comparison["difference"] == pytest.approx(np.mean(y) - np.mean(x))
        assert comparison["p_value"] == pytest.approx(
            stats.ttest_ind(x, y, equal_var=False).pvalue)
    # Layer 0 differs, layer 6 does not.
    assert body["entries"]["0"]["0"]["comparisons"][0]["p_value"] < 0.01
    assert body["entries"]["6"]["6"]["comparisons"][0]["p_value"] > 0.3

    plot = client.get("/v1/studies/compare.png", params={"ids": f"{a.id},{b.id}"})
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    width, height = png_size(plot.content)
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert body["spec_differences"] == [{"a": a.id, "b": b.id, "fields": {}}]


def test_a_comparison_says_what_else_than_the_seed_differs(client: Any,
                                                           finished_job: Any) -> None:
    """A p = 0.009 star once stood between studies whose quantas learnt 30 times faster in
    one of them, unsaid; a seed of their own is the only difference that goes unsaid."""
    values = {"0": [0.61, 0.64, 0.60, 0.66]}
    body = json.dumps(summary(values)).encode()
    a = finished_job("study", {**SPEC, "seed": 1}, {"summary.json": body})
    b = finished_job("study", {**SPEC, "seed": 2, "quanta_learning_rate_multiplier": 30},
                     {"summary.json": body})
    compared = client.get("/v1/studies/compare", params={"ids": f"{a.id},{b.id}"}).json()
    assert compared["spec_differences"] == [{"a": a.id, "b": b.id, "fields": {
        "quanta_learning_rate_multiplier": [None, 30]}}]
    from quanta_client.tables import compare_table

    lines: list[str] = []
    compare_table(compared, lines.append)
    assert f"{b.id[:8]} differs from {a.id[:8]} in more than the seed: " \
           "quanta_learning_rate_multiplier None → 30" in lines


def test_a_study_with_other_layers_and_the_all_entry(client: Any, finished_job: Any,
                                                     studies: Any) -> None:
    a = studies["a"][0]
    c = finished_job("study", SPEC, {"summary.json": json.dumps(
        summary({"0": [0.5, 0.52]}, all_at_once=[0.4, 0.45])).encode()})
    body = client.get("/v1/studies/compare", params={"ids": f"{a.id},{c.id}"}).json()
    six = body["entries"]["6"]["6"]
    assert six["studies"][c.id]["n"] == 0 and six["studies"][c.id]["mean"] is None
    assert six["comparisons"][0]["difference"] is None
    assert six["comparisons"][0]["p_value"] is None
    assert set(body["entries"]["all"]) == {"0", "6"}
    assert body["entries"]["all"]["0"]["studies"][a.id]["n"] == 0
    assert client.get("/v1/studies/compare.png", params={"ids": f"{a.id},{c.id}"}
                      ).status_code == 200


def test_unfinished_studies_are_409_unless_partial(client: Any, db: Any, studies: Any,
                                                   source_job: Any) -> None:
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    a = studies["a"][0]
    spec = {"source_task": "digits", "target_task": "digits",
            "source_weights": {"job": source_job.id}, "layers": [0], "nb_of_runs": 3,
            "width_multiplier": 0.0625, "seed": 1}
    running = client.post("/v1/jobs", json={"kind": "study", "spec": spec}).json()
    response = client.get("/v1/studies/compare", params={"ids": f"{a.id},{running['id']}"})
    assert response.status_code == 409 and "partial=true" in response.text
    # Two of its three runs succeeded so far.
    kids = db.query(Job).filter(Job.parent_id == running["id"]).order_by(Job.study_run).all()
    for child, value in zip(kids[:2], (0.55, 0.57), strict=True):
        transition(db, child, JobStatus.RUNNING, worker="w@host")
        transition(db, child, JobStatus.SUCCEEDED, owner="w@host", result={
            "runs": [{"run": 0, "quantas": {"0": {"source": value, "target": 1 - value}}}]})
    db.commit()
    body = client.get("/v1/studies/compare", params={"ids": f"{a.id},{running['id']}",
                                                     "partial": "true"}).json()
    part = body["studies"][1]
    assert part["complete"] is False and part["status"] == "queued"
    cell = body["entries"]["0"]["0"]
    assert cell["studies"][running["id"]]["values"] == [0.55, 0.57]
    assert cell["studies"][running["id"]]["curve"] is None
    assert cell["comparisons"][0]["difference"] == pytest.approx(
        0.56 - np.mean(studies["a"][1]["0"]))


@pytest.mark.parametrize(("ids", "status", "text"), [
    ("{a}", 422, "two study ids"),
    ("{a},{a}", 422, "named twice"),
    ("{a},nope", 404, "nope"),
    ("{a},{source}", 404, "only studies"),
    ("{a},../x", 422, "not a job id"),
    (",".join(["{a}"] * 11), 422, "at most 10"),
])
def test_bad_comparisons(client: Any, studies: Any, finished_job: Any, ids: str, status: int,
                         text: str) -> None:
    source = finished_job("source", dict(TINY_SOURCE))
    query = ids.format(a=studies["a"][0].id, source=source.id)
    for path in ("/v1/studies/compare", "/v1/studies/compare.png"):
        response = client.get(path, params={"ids": query})
        assert response.status_code == status, response.text
        assert text in response.text


def test_only_the_owners_studies_are_compared(settings: Any, finished_job: Any, db: Any,
                                              studies: Any) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from quanta_jobs.models import Job

    (a, _), (b, _) = studies["a"], studies["b"]
    db.execute(update(Job).where(Job.id == a.id).values(owner="alice"))
    db.execute(update(Job).where(Job.id == b.id).values(owner="bob"))
    db.commit()
    config = settings.model_copy(update={"api_tokens": f"alice:{'a' * 32},bob:{'b' * 32}"})
    with TestClient(create_app(config)) as http:
        alice = {"Authorization": f"Bearer {'a' * 32}"}
        response = http.get("/v1/studies/compare", params={"ids": f"{a.id},{b.id}"},
                            headers=alice)
        assert response.status_code == 404 and b.id in response.text
        assert http.get("/v1/studies/compare", params={"ids": f"{a.id},{b.id}"}
                        ).status_code == 401


def test_the_client_prints_the_comparison_and_writes_the_plot(
        client: Any, studies: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`quanta-client compare` against the real app (through the test client's transport)."""
    from quanta_client import cli
    from quanta_client.api import Client

    monkeypatch.setattr(cli, "Client", lambda server, token: Client(
        "http://testserver", token, transport=client._transport))
    (a, a_values), (b, b_values) = studies["a"], studies["b"]
    plot = tmp_path / "compare.png"
    assert cli.main(["compare", a.id, b.id, "--plot", str(plot)]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0] in ("0", "6")]
    assert [row[:2] for row in rows] == [["0", "0"], ["6", "6"]]
    for row in rows:
        layer = row[0]
        assert float(row[2]) == pytest.approx(np.mean(a_values[layer]), abs=1e-4)
        assert float(row[4]) == pytest.approx(np.mean(b_values[layer]), abs=1e-4)
        assert float(row[6]) == pytest.approx(
            np.mean(b_values[layer]) - np.mean(a_values[layer]), abs=1e-4)
        assert float(row[7]) == pytest.approx(stats.ttest_ind(
            a_values[layer], b_values[layer], equal_var=False).pvalue, abs=1e-3)
    assert png_size(plot.read_bytes())[0] >= 600 and "plot written" in out.err
    assert cli.main(["compare", a.id]) == 2
    assert cli.main(["compare", a.id, "nope"]) == 2
