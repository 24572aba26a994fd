"""Baseline scores through the service: the `scores` job kind and a study's `baselines`.

Real parts: a tiny source really trained by an in-process `JobRunner` on the offline
`digits` task, the real API (SQLite), real inference for the scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.support.files import png_size
from tests.support.jobs import TINY_SOURCE, drain

COMMON = {"source_task": "digits", "target_task": "digits", "width_multiplier": 0.0625}
FEATURE_SCORES = ("logme", "h_score", "transrate", "gbc")


@pytest.mark.parametrize(("extra", "field"), [
    ({"layers": [7]}, "layers"),
    ({"layers": [-1]}, "layers"),
    ({"layers": []}, "layers"),
    ({"nb_of_runs": 2}, "nb_of_runs"),
    ({"nb_of_target_samples": 0}, "nb_of_target_samples"),
])
def test_a_bad_scores_spec_is_422_naming_the_field(client: Any, source_job: Any,
                                                    extra: dict[str, Any], field: str) -> None:
    spec = {**COMMON, "source_weights": {"job": source_job.id}, **extra}
    response = client.post("/v1/jobs", json={"kind": "scores", "spec": spec})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]


def test_scores_of_a_missing_source_are_422(client: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "scores", "spec": {
        **COMMON, "source_weights": {"job": "nope"}}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-2:] == ["source_weights", "job"]


@pytest.fixture
def trained(client: Any, settings: Any) -> Any:
    """A really trained tiny source, and the runner."""
    from worker.runner import JobRunner

    if not settings.database_url.startswith("sqlite"):
        pytest.skip("real training once is enough: it runs on SQLite")
    runner = JobRunner(settings)
    source = client.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE}).json()
    assert runner.run(source["id"], "w@host").status == "succeeded"
    yield runner, source["id"]
    runner.engine.dispose()


def test_a_scores_job_scores_every_layer_without_training(client: Any, settings: Any,
                                                          trained: Any) -> None:
    from quanta.datasets import load_dataset
    from quanta.score_features import baseline_scores
    from quanta.sources import load_source

    runner, source_id = trained
    spec = {**COMMON, "source_weights": {"job": source_id}, "nb_of_target_samples": 200}
    job = client.post("/v1/jobs", json={"kind": "scores", "spec": spec}).json()
    assert job["kind"] == "scores" and job["status"] == "queued"
    assert runner.run(job["id"], "w@host").status == "succeeded"
    body = client.get(f"/v1/jobs/{job['id']}").json()
    result = body["result"]
    assert result["file"] == "digits_to_digits/baseline_scores.json"
    assert result["nb_of_samples"] == 200 and list(result["layers"]) == list(map(str, range(7)))
    for values in result["layers"].values():
        assert all(math.isfinite(values[name]) for name in FEATURE_SCORES), values
    assert set(result["source"]) == {"leep", "nce"}
    # The file is an artifact, with the same scores.
    paths = {a["path"] for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"]}
    assert paths == {"digits_to_digits/baseline_scores.json"}
    saved = client.get(f"/v1/jobs/{job['id']}/artifacts/{result['file']}").json()
    assert saved["layers"] == result["layers"] and saved["source"] == result["source"]
    assert saved["target_task"] == "digits" and saved["samples"] == "target training split"
    # They are the scores of the source's features on the first 200 training samples.
    weights = next(Path(settings.artifacts_dir, source_id).rglob("source.weights.h5"))
    data = load_dataset("digits").take(200)
    direct = baseline_scores(load_source(weights, data, 0.0625, None), data.x_train,
                             data.y_train, layers=[0, 6])
    for layer in ("0", "6"):
        for name in FEATURE_SCORES:
            assert result["layers"][layer][name] == pytest.approx(direct["layers"][layer][name],
                                                                  rel=1e-4)


def test_a_study_with_baselines_reports_the_scores_beside_lambda_s(
        client: Any, settings: Any, trained: Any, db: Any) -> None:

    runner, source_id = trained
    spec = {**COMMON, "source_weights": {"job": source_id}, "layers": [0, 3, 6],
            "nb_of_runs": 1, "nb_of_target_epochs": 1, "nb_of_target_samples": 64, "seed": 2,
            "baselines": True}
    study = client.post("/v1/jobs", json={"kind": "study", "spec": spec}).json()
    assert drain(runner, db) == 3
    body = client.get(f"/v1/jobs/{study['id']}").json()
    assert body["status"] == "succeeded", body
    summary = client.get(f"/v1/jobs/{study['id']}/summary").json()
    baselines = summary["baselines"]
    assert baselines["file"] == "baseline_scores.json" and baselines["nb_of_samples"] == 64
    assert list(baselines["layers"]) == ["0", "3", "6"]
    for layer, values in baselines["layers"].items():
        assert values["lambda_s"] == pytest.approx(
            summary["entries"][layer]["lambda_s"][layer]["mean"])
        assert all(math.isfinite(values[name]) for name in FEATURE_SCORES)
    assert set(baselines["correlations"]) == set(FEATURE_SCORES)
    for c in baselines["correlations"].values():
        assert c["n"] == 3
        assert c["spearman"] is None or -1 <= c["spearman"] <= 1
    assert body["result"]["baselines"]["correlations"] == baselines["correlations"]
    # The study's files: the scores, and summary.csv with a column per score.
    paths = {a["path"] for a in client.get(f"/v1/jobs/{study['id']}/artifacts").json()["items"]}
    assert "baseline_scores.json" in paths
    table = client.get(f"/v1/jobs/{study['id']}/artifacts/summary.csv").text
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["entry"] for r in rows] == ["0", "3", "6"]
    for row in rows:
        assert float(row["logme"]) == pytest.approx(baselines["layers"][row["entry"]]["logme"])
    saved = json.loads(client.get(f"/v1/jobs/{study['id']}/artifacts/baseline_scores.json").text)
    assert saved["layers"]["3"]["gbc"] == pytest.approx(baselines["layers"]["3"]["gbc"])
    # The transferability plot has the scores' panel below λ_s: taller than without.
    plot = client.get(f"/v1/jobs/{study['id']}/plots/transferability.png").content
    assert png_size(plot)[1] > 7.0 * 120 * 0.8
