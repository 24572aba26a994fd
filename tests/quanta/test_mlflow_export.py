"""Jobs in MLflow, against a real `mlflow server` (SQLite backend) started here: the
command line's `--mlflow`, a service whose workers export every job and study, and a
tracking server that does not answer (issue: the tools researchers use)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from quanta import cli
from tests.support import REPO
from tests.support.jobs import wait_job
from tests.support.live_service import running_service, wait_http
from tests.support.net import free_port
from tests.support.reference_files import reference_weights_bytes

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")


def _server_command() -> str | None:
    """The `mlflow` command of a full MLflow (the server), kept in a virtual environment
    of its own (.ci/run makes `.venv-mlflow`): its dependencies are not the project's."""
    for candidate in (os.environ.get("QUANTA_TEST_MLFLOW"), REPO / ".venv-mlflow/bin/mlflow",
                      shutil.which("mlflow")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    command = _server_command()
    if command is None:
        pytest.skip("no MLflow server: make .venv-mlflow (see .ci/run) or set QUANTA_TEST_MLFLOW")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [command, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", process, 180, "the MLflow server answering /health",
                  log=root / "server.log")
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
        log.close()


def _client(url):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs(url, experiment="quanta"):
    client = _client(url)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "source.weights.h5"
    path.write_bytes(reference_weights_bytes())
    return path


TRANSFER = ["-s", "digits", "-t", "digits", "-l", "0", "--nb_of_target_samples", "64",
            "--nb_of_target_epochs", "2", "--width_multiplier", "0.0625", "--seed", "3"]


def test_the_command_line_logs_params_epochs_and_files(server, weights, tmp_path, capsys):
    # Another layer's experiment first, in the same folder: it is not this run's.
    assert cli.main([*TRANSFER[:5], "6", *TRANSFER[6:], "-sw", str(weights), "-o",
                     str(tmp_path)]) == 0
    assert cli.main([*TRANSFER, "-sw", str(weights), "-o", str(tmp_path), "--witness",
                     "--mlflow", server]) == 0
    assert "MLflow run" in capsys.readouterr().out
    (run,) = _runs(server)
    assert run.data.params["layer_to_transfer"] == "0" and run.data.params["seed"] == "3"
    client = _client(server)
    lam = client.get_metric_history(run.info.run_id, "lambda_s/0")
    assert [m.step for m in lam] == [0, 1, 2]  # the start, then every epoch
    assert abs(lam[0].value - 0.9002) < 1e-3
    loss = client.get_metric_history(run.info.run_id, "target/loss")
    assert [m.step for m in loss] == [1, 2]
    assert "final_witness/categorical_accuracy" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "quantas_r_0_l_0.jsonl" in files and "training_metrics_of_target_r_0_l_0.jsonl" \
        in files
    assert not any(path.endswith(".keras") for path in files)  # models stay with the job
    assert not any(path.endswith("_l_6.jsonl") for path in files)
    assert not any(key.startswith("lambda_s/6") for key in run.data.metrics)


def test_a_server_that_does_not_answer_costs_a_bounded_wait(weights, tmp_path, caplog):
    """A port that accepts connections and never answers: the run ends, says why."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        assert cli.main([*TRANSFER, "-sw", str(weights), "-o", str(tmp_path), "--mlflow", url,
                         "--mlflow_timeout", "3"]) == 0
        waited = time.monotonic() - began
    finally:
        silent.close()
    assert "did not answer within 3 s" in caplog.text or "not exported to MLflow" in caplog.text
    assert (tmp_path / "digits_to_digits" / "quantas_r_0_l_0.jsonl").is_file()
    assert waited < 120  # the training and 3 s, not MLflow's own retries


def test_a_study_is_a_parent_run_with_its_jobs_nested(server, weights, tmp_path):
    with running_service(tmp_path / "service", workers=1, mlflow_tracking_uri=server,
                         mlflow_experiment="service") as live:
        http = httpx.Client(base_url=live.url, timeout=60)
        upload = http.post("/v1/uploads", files={"file": ("s.weights.h5",
                                                          weights.read_bytes())}).json()
        response = http.post("/v1/jobs", json={"kind": "study", "spec": {
            "source_task": "digits", "target_task": "digits", "layers": [0, 6],
            "source_weights": {"upload": upload["id"]}, "nb_of_runs": 1,
            "nb_of_target_epochs": 2, "nb_of_target_samples": 64, "width_multiplier": 0.0625,
            "seed": 1}})
        assert response.status_code == 201, response.text
        study = response.json()["id"]
        ended = wait_job(http, study, timeout=600)
        assert ended["status"] == "succeeded", live.text()[-3000:]
    runs = _runs(server, "service")
    parent = next(r for r in runs if r.data.tags.get("quanta.kind") == "study")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and {c.data.params["layer_to_transfer"] for c in children} == \
        {"0", "6"}
    assert {"lambda_s_mean/0", "lambda_s_mean/6"} <= set(parent.data.metrics)
    assert parent.data.tags["quanta.job"] == study
