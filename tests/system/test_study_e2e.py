"""Studies end to end: two real workers, a real HTTP server, the client command line.

One service for the whole module: two `python -m worker.main` processes on Redis (a
database of our own, purged first), and uvicorn serving `api.main:app` on SQLite.
Everything trains the tiny network (width 0.0625) on the offline `digits` task.

The expensive work starts at once so that both workers stay busy: a study (layers
0 and 3, two runs each, with witness), read live over Server-Sent Events from its
submission, and `quanta-client submit` of the same transfer (layer 0, two runs) in a
subprocess; meanwhile this process runs the local `quanta` command line on the same
spec, to compare files with.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import stats

from tests.support.jobs import TINY_SOURCE, wait_job
from tests.support.live_service import running_api
from tests.support.net import free_port, port_open
from tests.support.processes import WorkerProcess, service_env
from tests.support.reference_files import reference_weights_bytes
from tests.support.waiting import wait_until

#: A Redis database of its own: flushed before the module runs.
BROKER = "redis://127.0.0.1:6379/6"
EPOCHS, SAMPLES, SEED = 2, 64, 42
#: The study's spec (with a witness in every run); the transfer of the command lines is
#: the same without the witness, which would double its cost.
COMMON = {"source_task": "digits", "target_task": "digits", "nb_of_target_epochs": EPOCHS,
          "nb_of_target_samples": SAMPLES, "width_multiplier": 0.0625, "seed": SEED,
          "witness": True}
CLI_OPTIONS = ["-s", "digits", "-t", "digits", "-l", "0", "-r", "2",
               "--nb_of_target_epochs", str(EPOCHS), "--nb_of_target_samples", str(SAMPLES),
               "--width_multiplier", "0.0625", "--seed", str(SEED)]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import redis

    from quanta_jobs.migrate import upgrade
    from quanta_jobs.settings import Settings

    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    tmp = tmp_path_factory.mktemp("study-e2e")
    values = {
        "database_url": f"sqlite:///{tmp / 'quanta.db'}",
        "broker_url": BROKER,
        "queue": f"quanta-study-{uuid.uuid4().hex[:10]}",
        "artifacts_dir": tmp / "artifacts",
        "uploads_dir": tmp / "uploads",
        "cancel_poll_s": 0.1,
        "heartbeat_s": 1,
        "requeue_interval_s": 0,
        "migrate_on_start": "false",
    }
    settings = Settings(**values)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    broker = redis.Redis.from_url(BROKER)
    broker.flushdb()
    env = service_env(**values)
    workers = [WorkerProcess(env, tmp / f"w{i}.log", f"study-w{i}") for i in (1, 2)]
    try:
        with running_api(env, tmp) as url, httpx.Client(base_url=url, timeout=30) as http:
            for worker in workers:
                worker.wait_ready()
            yield SimpleNamespace(url=url, http=http, tmp=tmp, settings=settings,
                                  workers=workers)
    finally:
        for worker in workers:
            worker.stop()
        broker.flushdb()
        broker.close()


def logs(live: SimpleNamespace) -> str:
    return "\n".join(w.text()[-2500:] for w in live.workers)


@pytest.fixture(scope="module")
def source(live: SimpleNamespace) -> dict[str, Any]:
    """A trained source job, and its weights as a local file (for the command lines)."""
    response = live.http.post("/v1/jobs", json={"kind": "source", "spec": TINY_SOURCE})
    assert response.status_code == 201, response.text
    job = wait_job(live.http, response.json()["id"], timeout=TIMEOUT_S)
    assert job["status"] == "succeeded", logs(live)
    weights = live.tmp / "source.weights.h5"
    weights.write_bytes(live.http.get(
        f"/v1/jobs/{job['id']}/artifacts/digits_training/source.weights.h5").content)
    return {"job": job, "weights": weights}


class EventReader(threading.Thread):
    """Reads a job's Server-Sent Events from the start until `end`."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.events: list[tuple[int | None, str, dict[str, Any]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from quanta_client.api import parse_sse

        try:
            with httpx.Client(base_url=self.url, timeout=httpx.Timeout(10, read=60)) as http, \
                    http.stream("GET", f"/v1/jobs/{self.job_id}/events") as response:
                assert response.status_code == 200
                for event in parse_sse(response.iter_lines()):
                    self.events.append(event)
        except BaseException as exc:  # reported by the test
            self.error = exc


def client_command() -> list[str]:
    script = Path(sys.executable).parent / "quanta-client"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "quanta_client"]


@pytest.fixture(scope="module")
def started(live: SimpleNamespace, source: dict[str, Any]) -> SimpleNamespace:
    """The study (followed live from its submission) and the client's transfer, started."""
    spec = {**COMMON, "source_weights": {"job": source["job"]["id"]}, "layers": [0, 3],
            "nb_of_runs": 2}
    response = live.http.post("/v1/jobs", json={"kind": "study", "spec": spec})
    assert response.status_code == 201, response.text
    study_id = response.json()["id"]
    reader = EventReader(live.url, study_id)
    reader.start()
    download = live.tmp / "client-download"
    out, err = open(live.tmp / "client.out", "wb"), open(live.tmp / "client.err", "wb")  # noqa: SIM115
    command = [*client_command(), "submit", *CLI_OPTIONS, "-sw", str(source["weights"]),
               "--server", live.url, "--wait", "--download", str(download)]
    process = subprocess.Popen(command, stdout=out, stderr=err, cwd=live.tmp,
                               env=service_env())
    return SimpleNamespace(study_id=study_id, reader=reader, client=process, download=download,
                           out=out, err=err)


@pytest.fixture(scope="module")
def local_run(source: dict[str, Any], started: SimpleNamespace,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client's transfer with the local command line (while the service works)."""
    from quanta import cli

    out = tmp_path_factory.mktemp("local")
    assert cli.main(["-o", str(out), "-sw", str(source["weights"]), *CLI_OPTIONS]) == 0
    return out


@pytest.fixture(scope="module")
def study(live: SimpleNamespace, started: SimpleNamespace, local_run: Path) -> dict[str, Any]:
    """The study, ended (the local run goes first: it works while the workers do)."""
    job = wait_job(live.http, started.study_id, timeout=TIMEOUT_S)
    assert job["status"] == "succeeded", f"{job}\n{logs(live)}"
    return job


@pytest.fixture(scope="module")
def study_children(live: SimpleNamespace, study: dict[str, Any]) -> list[dict[str, Any]]:
    return list(live.http.get(f"/v1/jobs/{study['id']}/children").json()["items"])


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_children_run_in_parallel_on_both_workers(live: SimpleNamespace, study: dict[str, Any],
                                                  study_children: list[dict[str, Any]],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert [(c["spec"]["layer_to_transfer"], c["study_run"], c["spec"]["seed"])
            for c in study_children] == [(0, 0, SEED), (3, 0, SEED), (0, 1, SEED + 1),
                                         (3, 1, SEED + 1)]
    assert {c["status"] for c in study_children} == {"succeeded"}
    assert len({c["worker"] for c in study_children}) == 2
    spans = [(stamp(c["started_at"]), stamp(c["finished_at"])) for c in study_children]
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                   if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, spans
    assert study["progress"]["done"] == study["progress"]["total"] == 4
    assert study["result"]["complete"] is True and study["result"]["missing"] == []
    wall = (stamp(study["finished_at"]) - stamp(study["created_at"])).total_seconds()
    busy = sum((end - begin).total_seconds() for begin, end in spans)
    with capsys.disabled():
        print(f"\nstudy of 4 jobs on 2 workers: {wall:.1f}s wall, {busy:.1f}s of job time "
              f"({busy / wall:.2f} jobs at once on average)")


def _last_line(text: str) -> dict[str, Any]:
    return dict(json.loads(text.strip().splitlines()[-1]))


def _describe(values: list[float]) -> tuple[float, float, list[float]]:
    x = np.asarray(values)
    mean, std = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x)))
    return mean, std, [mean - half, mean + half]


def test_summary_matches_the_childrens_files(live: SimpleNamespace, study: dict[str, Any],
                                            study_children: list[dict[str, Any]]) -> None:
    summary = live.http.get(f"/v1/jobs/{study['id']}/summary").json()
    assert summary["complete"] is True and summary["missing"] == []
    # Each run's witness is trained once, by its layer-0 job, and shared by every layer.
    witness_of_run = {}
    for child in study_children:
        trains = child["spec"]["layer_to_transfer"] == 0
        assert child["spec"]["witness"] is trains
        assert summary["witnesses"].get(str(child["study_run"])) == (
            child["id"] if trains else summary["witnesses"][str(child["study_run"])])
        if trains:
            base = f"/v1/jobs/{child['id']}/artifacts/digits_to_digits"
            witness_of_run[child["study_run"]] = _last_line(live.http.get(
                f"{base}/testing_metrics_of_witness_r_0_l_0.jsonl").text)["categorical_accuracy"]
    for layer in ("0", "3"):
        finals, curves, target, witness = [], [], [], []
        for child in (c for c in study_children if str(c["spec"]["layer_to_transfer"]) == layer):
            base = f"/v1/jobs/{child['id']}/artifacts/digits_to_digits"
            quantas = _last_line(live.http.get(f"{base}/quantas_r_0_l_{layer}.jsonl").text)
            curve = quantas[layer]["quantas"]["source"]
            finals.append(curve[-1])
            curves.append(curve)
            target.append(_last_line(live.http.get(
                f"{base}/testing_metrics_of_target_r_0_l_{layer}.jsonl").text)
                ["categorical_accuracy"])
            witness.append(witness_of_run[child["study_run"]])
            run = child["result"]["runs"][0]  # the witness flows into its own job's result
            if layer == "0":
                assert run["witness_metrics"]["categorical_accuracy"] == witness[-1]
                assert run["transfer_gain"] == pytest.approx(target[-1] - witness[-1])
            else:  # trained once, not again for this layer
                assert run["witness_metrics"] is None
                assert live.http.get(f"{base}/testing_metrics_of_witness_r_0_l_{layer}.jsonl"
                                     ).status_code == 404
        entry = summary["entries"][layer]
        for stat, values in ((entry["lambda_s"][layer], finals),
                             (entry["target_accuracy"], target),
                             (entry["witness_accuracy"], witness),
                             (entry["transfer_gain"], list(np.subtract(target, witness)))):
            mean, std, ci = _describe(values)
            assert stat["n"] == 2
            assert stat["mean"] == pytest.approx(mean, abs=1e-12)
            assert stat["std"] == pytest.approx(std, abs=1e-12)
            assert stat["ci95"] == pytest.approx(ci, abs=1e-9)
        assert entry["lambda_s_per_epoch"][layer] == pytest.approx(
            np.mean(curves, axis=0).tolist())
    csv_rows = live.http.get(f"/v1/jobs/{study['id']}/artifacts/summary.csv").text.splitlines()
    assert len(csv_rows) == 3 and csv_rows[1].startswith("0,0,2,")


def _png(response: httpx.Response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    data = response.content
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_are_pngs_of_a_readable_size(live: SimpleNamespace, study: dict[str, Any],
                                           study_children: list[dict[str, Any]]) -> None:
    for name in ("transferability", "accuracy"):
        width, height = _png(live.http.get(f"/v1/jobs/{study['id']}/plots/{name}.png"))
        assert 600 <= width <= 2000 and 400 <= height <= 1500
    width, height = _png(live.http.get(f"/v1/jobs/{study_children[0]['id']}/plots/quantas.png"))
    assert 500 <= width <= 2000 and 300 <= height <= 1500
    missing = live.http.get(f"/v1/jobs/{study['id']}/plots/quantas.png")
    assert missing.status_code == 404 and "accuracy, transferability" in missing.text


def test_events_deliver_every_epoch_of_every_child_in_order(
        live: SimpleNamespace, started: SimpleNamespace, study: dict[str, Any],
        study_children: list[dict[str, Any]]) -> None:
    started.reader.join(60)
    assert not started.reader.is_alive() and started.reader.error is None, started.reader.error
    events = started.reader.events
    ids = [seq for seq, _, _ in events if seq is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[-1][1] == "end" and events[-1][2]["status"] == "succeeded"
    for child in study_children:
        mine = [(name, data) for _, name, data in events if data.get("job") == child["id"]]
        epochs = [(d["layer"], d["run"], d["epoch"]) for n, d in mine if n == "epoch"]
        layer = str(child["spec"]["layer_to_transfer"])
        assert epochs == [(layer, child["study_run"], e) for e in range(1, EPOCHS + 1)]
        statuses = [d["status"] for n, d in mine if n == "status"]
        assert statuses == ["running", "succeeded"]
        assert all(d["parent"] == study["id"] for _, d in mine)
    own = [d["status"] for _, n, d in events if n == "status" and d["job"] == study["id"]]
    assert own == ["queued", "running", "succeeded"]
    # A client that reconnects with Last-Event-ID gets the rest only.
    from quanta_client.api import parse_sse

    with live.http.stream("GET", f"/v1/jobs/{study['id']}/events",
                          headers={"Last-Event-ID": str(ids[-3])}) as response:
        rest = list(parse_sse(response.iter_lines()))
    assert [seq for seq, _, _ in rest if seq is not None] == ids[-2:]
    assert rest[-1][1] == "end"


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_client_run_looks_like_the_local_command_line(live: SimpleNamespace,
                                                      started: SimpleNamespace,
                                                      local_run: Path) -> None:
    assert started.client.wait(TIMEOUT_S) == 0, (live.tmp / "client.err").read_text()[-3000:]
    started.out.close()
    started.err.close()
    stdout = (live.tmp / "client.out").read_text().splitlines()
    assert len(stdout) == 1 and re.fullmatch(r"[0-9a-f]{32}", stdout[0])  # ID=$(... submit)
    stderr = (live.tmp / "client.err").read_text()
    assert any(line.startswith("run 1: source accuracy") for line in stderr.splitlines())
    remote, local = _files(started.download), _files(local_run)
    assert set(remote) - set(local) == {"plots/quantas.png"}
    assert set(local) <= set(remote)
    jsonl = [path for path in local if path.endswith(".jsonl")]
    assert len(jsonl) == 2 * 4  # runs x (quantas, 2 testing and 1 training metrics files)
    for path in jsonl:  # seeded: the service computes exactly what the local run did
        assert remote[path].read_text() == local[path].read_text(), path


def test_study_download_is_the_local_layout_of_each_layer(live: SimpleNamespace,
                                                         study: dict[str, Any],
                                                         local_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """Child (layer, r) ran one run seeded with seed + r: it reproduces run r of
    `quanta -l layer -r 2 --seed 42`, and its files are renamed to run r."""
    from quanta_client import cli

    assert cli.main(["download", study["id"], str(tmp_path), "--server", live.url]) == 0
    files = _files(tmp_path)
    expected = {f"digits_to_digits/{name}_r_{r}_l_{layer}.{ext}"
                for r in (0, 1) for layer in (0, 3)
                for name, ext in (("source", "keras"), ("target", "keras"), ("quantas", "jsonl"),
                                  ("testing_metrics_of_source", "jsonl"),
                                  ("testing_metrics_of_target", "jsonl"),
                                  ("training_metrics_of_target", "jsonl"))}
    # The witness of each run is the layer-0 job's (the study trains it once per run).
    expected |= {f"digits_to_digits/{name}_r_{r}_l_0.jsonl" for r in (0, 1)
                 for name in ("testing_metrics_of_witness", "training_metrics_of_witness")}
    extras = {"summary.json", "summary.csv", "plots/transferability.png", "plots/accuracy.png",
              *(f"plots/quantas_r_{r}_l_{layer}.png" for r in (0, 1) for layer in (0, 3))}
    assert set(files) == expected | extras
    local = _files(local_run)
    compared = [p for p in expected if "_l_0." in p and p.endswith(".jsonl") and p in local]
    assert len(compared) == 2 * 4
    for path in compared:  # the same numbers (the witness trains after, apart)
        assert files[path].read_text() == local[path].read_text(), path
    assert f"{len(expected | extras)} files written" in capsys.readouterr().err


def test_client_errors_are_one_line_with_an_exit_code(live: SimpleNamespace,
                                                      source: dict[str, Any], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from quanta_client import cli

    with pytest.raises(SystemExit) as usage:
        cli.main(["submit", "-s", "digits"])
    assert usage.value.code == 2
    capsys.readouterr()
    base = ["submit", "-s", "digits", "-t", "digits", "-l", "0", "--server", live.url]
    assert cli.main([*base, "-sw", "job:nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source_weights.job: no job with id 'nope'" in err[0]
    assert cli.main([*base, "-sw", str(tmp_path / "absent.weights.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["status", "abc", "--server", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the QUANTA service" in err[0]
    # A job that fails: exit 1, and its error said.
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(reference_weights_bytes(nb_classes=100))  # the worker finds it misfits
    assert cli.main([*base, "-sw", str(bad), "--width_multiplier", "0.0625",
                     "--nb_of_target_samples", "32", "--wait", "--no-events"]) == 1
    captured = capsys.readouterr()
    (job_id,) = captured.out.splitlines()
    assert any("failed: source weights" in line for line in captured.err.splitlines())
    assert cli.main(["status", job_id, "--server", live.url]) == 1
    assert "error: source weights" in capsys.readouterr().out
    assert cli.main(["cancel", job_id, "--server", live.url]) == 2
    assert "409" in capsys.readouterr().err


def test_cancelling_a_study_cancels_its_jobs(live: SimpleNamespace, source: dict[str, Any],
                                             started: SimpleNamespace,
                                             study: dict[str, Any]) -> None:
    started.client.wait(TIMEOUT_S)  # both workers free
    spec = {**COMMON, "source_weights": {"job": source["job"]["id"]}, "layers": [0, 1],
            "nb_of_runs": 2, "nb_of_target_epochs": 500}
    study_id = live.http.post("/v1/jobs", json={"kind": "study", "spec": spec}).json()["id"]
    wait_until(lambda: live.http.get(f"/v1/jobs/{study_id}").json()["progress"]
               .get("running") == 2, 120, f"study {study_id} running two children at once")
    response = live.http.post(f"/v1/jobs/{study_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    # Ended within the bound, far from its 500 epochs: the running children were stopped
    # mid-training (how soon is the worker's cancel poll, not this test's to time).
    job = wait_job(live.http, study_id, timeout=120)
    assert job["status"] == "cancelled", logs(live)
    children = live.http.get(f"/v1/jobs/{study_id}/children").json()["items"]
    assert {c["status"] for c in children} == {"cancelled"}
    assert all((c["progress"] or {}).get("epoch", 0) < spec["nb_of_target_epochs"] / 2
               for c in children), children
    assert any(c["started_at"] is None for c in children)  # queued ones never ran
    assert any(c["started_at"] is not None for c in children)
    assert job["progress"]["cancelled"] == 4
    assert live.http.get(f"/v1/jobs/{study_id}/summary").status_code == 409
