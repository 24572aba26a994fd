"""`quanta-client` without a service: options, specs, errors, exit codes, the layout.

The service is played by an httpx MockTransport; `tests/system/test_study_e2e.py` runs the
client against a real one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from quanta_client import cli
from quanta_client.api import ApiError, Client, ClientError, describe, parse_sse
from quanta_client.downloads import as_run, safe_relative
from quanta_spec import RemoteSourceSpec, RemoteStudySpec, RemoteTransferSpec
from tests.support.net import free_port


def mock(handler: Any, monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Route the command line's requests to `handler(request) -> Response`."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    transport = httpx.MockTransport(record)
    monkeypatch.setattr(cli, "Client", lambda server, token: Client(server, token,
                                                                    transport=transport))
    return seen


def job(status: str = "succeeded", kind: str = "transfer", **extra: Any) -> dict[str, Any]:
    return {"id": "a" * 32, "kind": kind, "status": status, "spec": {"nb_of_runs": 1},
            "progress": None, "result": None, "error": None, **extra}


def test_field_errors_read_as_one_line() -> None:
    detail = [{"loc": ["body", "transfer", "spec", "source_weights", "job"],
               "msg": "no job with id 'x'", "type": "value_error"},
              {"loc": ["query", "limit"], "msg": "Value error, too big", "type": "x"}]
    assert describe(detail) == "source_weights.job: no job with id 'x'; limit: too big"
    assert describe("job 'x' already\n succeeded") == "job 'x' already succeeded"
    error = ApiError(409, "nothing to cancel", "POST", "/v1/jobs/x/cancel")
    assert str(error) == "409 nothing to cancel (POST /v1/jobs/x/cancel)"


def test_server_sent_events_are_parsed() -> None:
    text = ("retry: 2000\n\n: keep-alive\n\nid: 3\nevent: epoch\ndata: {\"epoch\": 1}\n\n"
            "event: end\ndata: {\"status\":\ndata: \"succeeded\"}\n\n")
    assert list(parse_sse(iter(text.split("\n")))) == [
        (3, "epoch", {"epoch": 1}), (None, "end", {"status": "succeeded"})]


@pytest.mark.parametrize(("text", "value"), [("all", "all"), ("0,3", [0, 3]),
                                             ("6,-1", [6, -1]), ("ALL", "all"),
                                             ("c1,block_2.out", ["c1", "block_2.out"])])
def test_layers_option(text: str, value: Any) -> None:
    assert cli.layers_option(text) == value


@pytest.mark.parametrize("text", ["7", "a/b", "", ",,", "-2", "conv 1"])
def test_bad_layers_option(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.layers_option(text)


def test_study_files_are_renamed_to_their_run() -> None:
    assert as_run("digits_to_digits/quantas_r_0_l_3.jsonl", 2) == \
        "digits_to_digits/quantas_r_2_l_3.jsonl"
    assert as_run("a_to_b/testing_metrics_of_witness_r_0_l_all.jsonl", 1) == \
        "a_to_b/testing_metrics_of_witness_r_1_l_all.jsonl"
    assert as_run("digits_to_digits/source_r_0_l_6.keras", 29) == \
        "digits_to_digits/source_r_29_l_6.keras"
    assert as_run("d_to_d/testing_metrics_of_target_per_epoch_r_0_l_3.jsonl", 4) == \
        "d_to_d/testing_metrics_of_target_per_epoch_r_4_l_3.jsonl"
    # a TensorBoard run is a folder: each of a study's runs keeps its own
    assert as_run("d_to_d/tensorboard/target_r_0_l_3/train/events.out.tfevents.1.h", 4) == \
        "d_to_d/tensorboard/target_r_4_l_3/train/events.out.tfevents.1.h"
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", "a\\b"):
        with pytest.raises(ClientError):
            safe_relative(bad)


class Uploads:
    """A service that stores uploads and accepts every job."""

    def __init__(self) -> None:
        self.uploads: list[str] = []
        self.jobs: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/uploads":
            self.uploads.append(request.content.decode(errors="replace"))
            return httpx.Response(201, json={"id": f"u{len(self.uploads)}", "kind": "x"})
        body = json.loads(request.content)
        self.jobs.append(body)
        progress = {"total": 4} if body["kind"] == "study" else None
        return httpx.Response(201, json=job("queued", body["kind"], progress=progress))


def test_submit_uploads_local_files_once_and_sends_a_valid_spec(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = Uploads()
    seen = mock(service, monkeypatch)
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"weights")
    data = tmp_path / "mine.npz"
    data.write_bytes(b"npz")
    model = tmp_path / "t.keras"
    model.write_bytes(b"keras")
    assert cli.main(["submit", "-s", str(data), "-t", f"npz:{data}", "-sw", str(weights),
                     "-l", "-1", "-r", "3", "--nb_of_target_epochs", "4", "--seed", "7",
                     "--witness", "--width_multiplier", "0.25", "--server", "http://svc",
                     "--token", "secret", "--train_from_previous_training", str(model),
                     "--precision", "mixed_bfloat16"]) == 0
    assert capsys.readouterr().out.strip() == "a" * 32
    assert len(service.uploads) == 3  # the dataset once, for both tasks
    (body,) = service.jobs
    spec = RemoteTransferSpec.model_validate(body["spec"])
    assert body["kind"] == "transfer" and spec.layer_to_transfer == -1
    assert spec.source_task == spec.target_task and spec.witness and spec.seed == 7
    assert (spec.nb_of_runs, spec.nb_of_target_epochs, spec.width_multiplier) == (3, 4, 0.25)
    assert spec.precision == "mixed_bfloat16"
    assert all(r.headers["authorization"] == "Bearer secret" for r in seen)
    assert str(seen[0].url).startswith("http://svc/")


def test_study_and_source_specs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    service = Uploads()
    mock(service, monkeypatch)
    assert cli.main(["study", "-s", "cifar10", "-t", "cifar100", "-sw", "job:abc",
                     "--layers", "0,6", "--include_all_at_once", "-r", "30"]) == 0
    assert cli.main(["train-source", "-s", "mnist", "--nb_of_epochs", "3",
                     "--train_from_previous_training", "job:src", "--seed", "1"]) == 0
    study, source = service.jobs
    spec = RemoteStudySpec.model_validate(study["spec"])
    assert spec.study_layers == (0, 6, -1) and spec.nb_of_runs == 30
    assert spec.source_weights.job == "abc"
    source_spec = RemoteSourceSpec.model_validate(source["spec"])
    assert source_spec.train_from_previous_training.job == "src"
    assert service.uploads == []


def test_a_study_until_an_interval_is_narrow_sends_the_rule(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--until` once crashed with a KeyError (a traceback) whatever else was given."""
    service = Uploads()
    mock(service, monkeypatch)
    assert cli.main(["study", "-s", "digits", "-t", "digits", "-sw", "job:abc",
                     "--layers", "0,3", "--until", "0.05", "--max_runs", "8"]) == 0
    (study,) = service.jobs
    spec = RemoteStudySpec.model_validate(study["spec"])
    assert "nb_of_runs" not in study["spec"]
    assert (spec.until.ci_halfwidth, spec.until.max_runs) == (0.05, 8)
    capsys.readouterr()
    assert cli.main(["study", "-s", "digits", "-t", "digits", "-sw", "job:abc", "--layers",
                     "0", "--until", "0.05", "-r", "3"]) == 2
    assert "give -r/--nb_of_runs or --until, not both" in capsys.readouterr().err


def test_server_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTA_SERVER", "http://elsewhere:9000/")
    monkeypatch.setenv("QUANTA_TOKEN", "tok")
    client = Client()
    assert client.server == "http://elsewhere:9000"
    assert client.http.headers["authorization"] == "Bearer tok"
    monkeypatch.delenv("QUANTA_TOKEN")
    assert "authorization" not in Client().http.headers


@pytest.mark.parametrize(("argv", "message"), [
    (["submit", "-s", "digits", "-t", "digits", "-l", "0", "-sw", "w.txt"], "must be a .h5"),
    (["submit", "-s", "nope", "-t", "digits", "-l", "0", "-sw", "job:x"], "unknown task"),
    (["submit", "-s", "digits", "-t", "digits", "-l", "0", "-sw", "job:x:y"], "job:ID:RUN"),
])
def test_bad_files_are_usage_errors(argv: list[str], message: str,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    mock(Uploads(), monkeypatch)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("status", "body", "code"), [
    (422, {"detail": [{"loc": ["body", "spec", "seed"], "msg": "too big", "type": "x"}]}, 2),
    (401, {"detail": "missing token"}, 2),
    (404, {"detail": "no job with id 'x'"}, 2),
    (500, {"detail": "Internal Server Error"}, 1),
])
def test_api_errors_are_one_line(status: int, body: dict[str, Any], code: int,
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    mock(lambda request: httpx.Response(status, json=body), monkeypatch)
    assert cli.main(["status", "x"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"quanta-client: error: {status} ")
    if status == 422:
        assert "seed: too big" in err[0]


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("running", 0),
                                              ("failed", 1), ("cancelled", 1)])
def test_status_exit_code(status: str, code: int, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    progress = {"run": 0, "nb_of_runs": 2, "epoch": 1, "nb_of_epochs": 4, "fraction": 0.125}
    mock(lambda request: httpx.Response(200, json=job(status, progress=progress,
                                                      error="boom" if status == "failed"
                                                      else None)), monkeypatch)
    assert cli.main(["status", "x"]) == code
    out = capsys.readouterr().out
    assert status in out and "run 0 (runs 0-1), epoch 1/4 (12%)" in out  # 0-based


def test_no_service_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cancel", "x", "--server", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the QUANTA service" in err[0]


def test_wait_follows_events_then_reports(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    result = {"experiment_dir": "d_to_d", "runs": [{
        "run": 0, "target_metrics": {"categorical_accuracy": 0.5},
        "source_metrics": {"categorical_accuracy": 0.9}, "quantas": {"0": {"source": 0.8}},
        "witness_metrics": {"categorical_accuracy": 0.4}, "transfer_gain": 0.1}]}
    stream = ("id: 1\nevent: status\ndata: {\"job\": \"" + "a" * 32 + "\", \"status\": "
              "\"running\"}\n\nid: 2\nevent: epoch\ndata: {\"job\": \"" + "a" * 32 + "\", "
              "\"run\": 0, \"epoch\": 1, \"nb_of_epochs\": 1, \"quantas\": {\"0\": {\"source\": "
              "0.8}}}\n\nevent: end\ndata: {\"status\": \"succeeded\"}\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text=stream,
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=job("succeeded", result=result))

    mock(handler, monkeypatch)
    assert cli.main(["wait", "x"]) == 0
    captured = capsys.readouterr()
    assert "run 0: source accuracy 0.9000, target accuracy 0.5000" in captured.out
    assert "transfer gain +0.1000" in captured.out
    assert "1/1" in captured.err  # the progress bar reached its end


def test_one_run_study_reports_no_interval(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """One run has no spread: the service sends null std and ci95, the report says n/a."""
    one = {"n": 1, "mean": 0.75, "std": None, "ci95": None, "values": [0.75]}
    two = {"n": 2, "mean": 0.5, "std": 0.1, "ci95": [0.4, 0.6], "values": [0.45, 0.55]}
    summary = {"entries": {"3": {"runs": [0], "lambda_s": {"3": one},
                                 "target_accuracy": two, "transfer_gain": None}},
               "missing": []}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/summary"):
            return httpx.Response(200, json=summary)
        return httpx.Response(200, json=job("succeeded", kind="study", result={}))

    mock(handler, monkeypatch)
    assert cli.main(["wait", "x", "--no-events"]) == 0
    out = capsys.readouterr().out
    assert "0.7500 [n/a]" in out and "0.5000 [0.4000, 0.6000]" in out


def test_the_networks_order_and_protocol_options(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    service = Uploads()
    mock(service, monkeypatch)
    base = ["-s", "digits", "-t", "digits", "-sw", "job:abc"]
    assert cli.main(["submit", *base, "-l", "3", "--architecture", "compact2025", "--shuffle",
                     "--test_every_epoch", "--quanta_lr_multiplier", "10"]) == 0
    assert cli.main(["submit", *base, "-l", "3", "--quanta_gradient_multiplier", "5"]) == 0
    assert cli.main(["study", *base, "--protocol", "kes2021"]) == 0
    assert cli.main(["study", *base, "--protocol", "kes2021", "-r", "2", "--layers", "0,6"]) == 0
    assert cli.main(["study", *base, "--layers", "1"]) == 0
    assert cli.main(["train-source", "-s", "digits", "--architecture", "compact2025",
                     "--shuffle"]) == 0
    named, deprecated, preset, overridden, plain, source = service.jobs
    spec = RemoteTransferSpec.model_validate(named["spec"])
    assert (spec.architecture, spec.shuffle, spec.test_every_epoch) == ("compact2025", True, True)
    assert spec.quanta_learning_rate_multiplier == 10
    spec = RemoteTransferSpec.model_validate(deprecated["spec"])
    assert spec.quanta_learning_rate_multiplier == 5 and spec.architecture is None
    assert not spec.shuffle and not spec.test_every_epoch
    study = RemoteStudySpec.model_validate(preset["spec"])
    assert study.study_layers == tuple(range(7)) and study.nb_of_jobs == 7 * 30
    assert (study.nb_of_target_epochs, study.augment_data, study.test_every_epoch,
            study.architecture) == (60, True, True, "kes2021")
    study = RemoteStudySpec.model_validate(overridden["spec"])
    assert study.nb_of_runs == 2 and study.study_layers == (0, 6)
    assert study.nb_of_target_epochs == 60
    study = RemoteStudySpec.model_validate(plain["spec"])  # no preset: the service's defaults
    assert (study.nb_of_runs, study.nb_of_target_epochs, study.augment_data) == (1, 1, False)
    source_spec = RemoteSourceSpec.model_validate(source["spec"])
    assert source_spec.architecture == "compact2025" and source_spec.shuffle
    capsys.readouterr()
    assert cli.main(["study", *base]) == 2
    assert "--layers (or --protocol)" in capsys.readouterr().err
