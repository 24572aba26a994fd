"""The seed's network and protocol through the whole service: a real worker, uvicorn, the
client command line, weights files in the reference's layout written by the test.

- `quanta-client submit -sw SourceModel.weights.h5` with a kes2021 file and
  `--test_every_epoch` runs to success; the download has the per-epoch test file.
- A compact2025 file uploaded, a transfer without `architecture`: the job's spec names
  the network read off the file, and its target is built with it.
- A study on the kes2021 preset, narrowed to one layer and one run, tests every epoch
  and its download renames the per-epoch file to the study's run.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from quanta_spec.networks import widths
from tests.support.jobs import wait_job
from tests.support.live_service import running_api
from tests.support.net import port_open
from tests.support.processes import WorkerProcess, service_env
from tests.support.reference_files import WIDTH, reference_weights_bytes

BROKER = "redis://127.0.0.1:6379/7"
TINY = ["-s", "digits", "-t", "digits", "--width_multiplier", str(WIDTH),
        "--nb_of_target_samples", "32", "--seed", "4"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import redis

    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings

    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    tmp = tmp_path_factory.mktemp("networks-e2e")
    values = {"database_url": f"sqlite:///{tmp / 'quanta.db'}", "broker_url": BROKER,
              "queue": f"quanta-networks-{uuid.uuid4().hex[:10]}",
              "artifacts_dir": tmp / "artifacts", "uploads_dir": tmp / "uploads",
              "heartbeat_s": 1, "requeue_interval_s": 0, "migrate_on_start": "false"}
    settings = Settings(**values)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    broker = redis.Redis.from_url(BROKER)
    broker.flushdb()
    env = service_env(**values)
    worker = WorkerProcess(env, tmp / "w.log", "networks-w")
    try:
        with running_api(env, tmp) as url, httpx.Client(base_url=url, timeout=30) as http:
            worker.wait_ready(timeout=400)  # a loaded machine imports TensorFlow slowly
            yield SimpleNamespace(url=url, http=http, tmp=tmp, worker=worker)
    finally:
        worker.stop()
        broker.flushdb()
        broker.close()


def _client(live: SimpleNamespace, argv: list[str], capsys: pytest.CaptureFixture[str]
            ) -> tuple[int, str]:
    from quanta_client import cli

    code = cli.main([*argv, "--server", live.url])
    captured = capsys.readouterr()
    assert code == 0, f"{captured.err}\n--- worker ---\n{live.worker.text()[-3000:]}"
    return code, captured.out.strip().splitlines()[0]


def test_the_client_runs_a_reference_weights_file(live: SimpleNamespace, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "SourceModel.weights.h5"
    weights.write_bytes(reference_weights_bytes("kes2021"))
    _, job_id = _client(live, ["submit", *TINY, "-sw", str(weights), "-l", "0",
                               "--test_every_epoch", "--nb_of_target_epochs", "2",
                               "--download", str(tmp_path / "expe"), "--no-events"], capsys)
    job = live.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["spec"]["architecture"] == "kes2021"
    per_epoch = tmp_path / "expe/digits_to_digits/testing_metrics_of_target_per_epoch_r_0_l_0.jsonl"
    line = json.loads(per_epoch.read_text().splitlines()[-1])
    assert sorted(line) == ["0", "1"] and 0 <= line["1"]["categorical_accuracy"] <= 1
    assert (tmp_path / "expe/plots/quantas.png").stat().st_size > 0


def test_a_compact2025_upload_runs_on_its_own_network(live: SimpleNamespace) -> None:
    upload = live.http.post("/v1/uploads", files={"file": (
        "SourceModel.weights.h5", reference_weights_bytes("compact2025"))})
    assert upload.status_code == 201, upload.text
    spec = {"source_task": "digits", "target_task": "digits", "layer_to_transfer": 6,
            "source_weights": {"upload": upload.json()["id"]}, "width_multiplier": WIDTH,
            "nb_of_target_samples": 32, "seed": 1}
    response = live.http.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["architecture"] == "compact2025"
    job = wait_job(live.http, response.json()["id"])
    assert job["status"] == "succeeded", live.worker.text()[-3000:]
    assert job["spec"]["architecture"] == "compact2025"
    model = live.http.get(f"/v1/jobs/{job['id']}/artifacts/digits_to_digits/"
                          "target_r_0_l_6.keras")
    assert model.status_code == 200
    archive = live.tmp / "target.keras"
    archive.write_bytes(model.content)
    config = json.loads(zipfile.ZipFile(archive).read("config.json"))
    units = {layer["config"]["units"] for layer in _layers(config)
             if layer["class_name"] == "Dense" and layer["config"]["name"] == "dense_6"}
    assert units == {widths("compact2025", WIDTH)[1]}


def _layers(config: Any) -> Iterator[dict[str, Any]]:
    """Every layer config, nested models included."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from _layers(value)
    elif isinstance(config, list):
        for value in config:
            yield from _layers(value)


def test_a_study_on_the_paper_preset_tests_every_epoch(live: SimpleNamespace, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    weights = tmp_path / "SourceModel.weights.h5"
    weights.write_bytes(reference_weights_bytes("kes2021", seed=2))
    _, study_id = _client(live, ["study", *TINY, "-sw", str(weights), "--protocol", "kes2021",
                                 "--layers", "3", "-r", "2", "--nb_of_target_epochs", "1",
                                 "--download", str(tmp_path / "expe"), "--no-events"], capsys)
    study = live.http.get(f"/v1/jobs/{study_id}").json()
    assert study["status"] == "succeeded"
    assert (study["spec"]["protocol"], study["spec"]["augment_data"],
            study["spec"]["test_every_epoch"]) == ("kes2021", True, True)
    folder = tmp_path / "expe/digits_to_digits"
    for run in (0, 1):
        line = json.loads((folder / f"testing_metrics_of_target_per_epoch_r_{run}_l_3.jsonl")
                          .read_text().splitlines()[-1])
        assert list(line) == ["0"]
    summary = live.http.get(f"/v1/jobs/{study_id}/summary").json()
    assert summary["entries"]["3"]["equal_run_lengths"] is True
    assert summary["entries"]["3"]["lambda_s"]["3"]["ci95"] is not None  # two runs
