"""A user's own network through a live service: upload, its layers, hostile networks,
named-layer checks at submission, a study of three named layers end to end, and the
client with a local .keras (issue: any Keras network)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import keras
import pytest

from tests.support.jobs import wait_job
from tests.support.live_service import running_service
from tests.support.own_networks import residual, trained


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-service")
    with running_service(root / "service", workers=1, cancel_poll_s=0.2) as service:
        service.http = httpx.Client(base_url=service.url, timeout=60)
        service.network = trained(residual(), root / "residual.keras")
        yield service
        service.http.close()


def _upload(live, path_or_bytes, name="net.keras"):
    content = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return live.http.post("/v1/uploads", files={"file": (name, content)})


@pytest.fixture(scope="module")
def network(live):
    response = _upload(live, live.network)
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "model"
    return response.json()["id"]


def _wait(live: Any, job_id: str, timeout: float = 600) -> dict[str, Any]:
    """`wait_job`, with the service's log tail in the message (what it did instead)."""
    try:
        return wait_job(live.http, job_id, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{live.text()[-3000:]}") from None


def test_the_api_lists_an_uploaded_network_s_layers(live, network):
    body = live.http.get(f"/v1/uploads/{network}/layers").json()
    assert body["kind"] == "Functional" and body["head"] == "head"
    assert body["input_shape"] == [16, 16, 3]
    names = [layer["name"] for layer in body["layers"] if layer["transferable"]]
    assert names == ["c1", "c2", "bn2", "add", "relu", "gap", "drop"]
    shared = next(layer for layer in body["layers"] if layer["name"] == "shared")
    assert not shared["transferable"] and "2 times" in shared["reason"]
    c1 = next(layer for layer in body["layers"] if layer["name"] == "c1")
    assert c1["class"] == "Conv2D" and c1["params"] == 448
    assert c1["output_shape"] == [None, 16, 16, 16]


def _lambda_model() -> bytes:
    images = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    buffer = io.BytesIO()
    path = Path(keras.utils.get_file.__module__.replace(".", "_"))  # unused name holder
    del path
    model = keras.Model(images, out)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        model.save(Path(folder) / "l.keras")
        buffer.write((Path(folder) / "l.keras").read_bytes())
    return buffer.getvalue()


def _with_config(source: Path, change) -> bytes:
    """The file `source` with its config.json changed by `change` (a hostile edit)."""
    import json

    out = io.BytesIO()
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(change(json.loads(data))).encode()
            zout.writestr(item, data)
    return out.getvalue()


def test_hostile_networks_are_refused_saying_why(live):
    response = _upload(live, _lambda_model(), "lambda.keras")
    assert response.status_code == 422 and "Lambda" in response.text

    def custom(config):
        config["config"]["layers"][2]["registered_name"] = "evil>Payload"
        config["config"]["layers"][2]["module"] = "evil.module"
        return config

    response = _upload(live, _with_config(live.network, custom), "custom.keras")
    assert response.status_code == 422 and "evil" in response.text

    def vocabulary(config):
        layer = config["config"]["layers"][2]
        layer["class_name"] = "StringLookup"
        return config

    response = _upload(live, _with_config(live.network, vocabulary), "files.keras")
    assert response.status_code == 422 and "reads files" in response.text

    def huge(config):
        config["config"]["layers"][2]["config"]["filters"] = 10**9
        return config

    response = _upload(live, _with_config(live.network, huge), "huge.keras")
    assert response.status_code == 422 and "QUANTA_MAX_MODEL_PARAMS" in response.text
    assert "Traceback" not in response.text


def _transfer(network, **extra):
    return {"kind": "transfer", "spec": {
        "source_task": "digits", "target_task": "digits", "source_model": {"upload": network},
        "nb_of_target_samples": 128, "nb_of_target_epochs": 2, "seed": 5, **extra}}


def test_layer_names_are_checked_at_submission(live, network):
    for layer, says in (("nope", "no layer 'nope'"), ("shared", "called 2 times"),
                        ("head", "classifier head"), (3, "named")):
        response = live.http.post("/v1/jobs", json=_transfer(network, layer_to_transfer=layer))
        assert response.status_code == 422, response.text
        assert says in response.text, response.text
    response = live.http.post("/v1/jobs", json={"kind": "study", "spec": {
        **_transfer(network)["spec"], "layers": ["c1", "nope"]}})
    assert response.status_code == 422 and "nope" in response.text


def test_a_study_of_three_named_layers_runs_in_graph_order(live, network):
    response = live.http.post("/v1/jobs", json={"kind": "study", "spec": {
        **_transfer(network)["spec"], "layers": ["relu", "c1", "bn2"], "nb_of_runs": 2,
        "witness": True, "baselines": True}})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["spec"]["layers"] == ["c1", "bn2", "relu"]  # the network's order
    done = _wait(live, study["id"])
    assert done["status"] == "succeeded", live.text()[-4000:]
    summary = live.http.get(f"/v1/jobs/{study['id']}/summary").json()
    assert list(summary["entries"]) == ["c1", "bn2", "relu"]
    for layer in ("c1", "bn2", "relu"):
        stat = summary["entries"][layer]["lambda_s"][layer]
        assert stat["n"] == 2 and 0 < stat["mean"] < 1
    scores = summary["baselines"]
    assert set(scores["layers"]) == {"c1", "bn2", "relu"}  # pooled features per named layer
    assert all(scores["layers"][k]["dims"] == 16 for k in scores["layers"])
    plot = live.http.get(f"/v1/jobs/{study['id']}/plots/transferability.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_the_client_uploads_a_local_network_and_lists_layers(live, tmp_path):
    command = [sys.executable, "-m", "quanta_client", "--server", live.url]
    out = subprocess.run([*command, "submit", "-s", "digits", "-sm", str(live.network), "-t",
                          "digits", "-l", "add", "--nb_of_target_samples", "64", "--seed", "1",
                          "--download", str(tmp_path / "got")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr + live.text()[-3000:]
    files = {p.name for p in (tmp_path / "got").rglob("*") if p.is_file()}
    assert {"network.json", "quantas_r_0_l_add.jsonl", "target_r_0_l_add.keras"} <= files


def test_a_study_of_all_layers_is_stored_with_every_transferable_name(live, network):
    """`"all"` of a user's network: the service expands it from the uploaded file, in
    graph order, and a retried request (same Idempotency-Key) is the same job."""
    body = {"kind": "study", "spec": {**_transfer(network)["spec"], "layers": "all"}}
    headers = {"Idempotency-Key": "own-all-1"}
    response = live.http.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    study = response.json()
    try:
        assert study["spec"]["layers"] == ["c1", "c2", "bn2", "add", "relu", "gap", "drop"]
        again = live.http.post("/v1/jobs", json=body, headers=headers)
        assert again.status_code in (200, 201) and again.json()["id"] == study["id"]
    finally:
        live.http.post(f"/v1/jobs/{study['id']}/cancel")
    by_name = {"kind": "study", "spec": {**_transfer(network)["spec"],
                                         "source_model": "keras.applications.MobileNetV2",
                                         "layers": "all"}}
    refused = live.http.post("/v1/jobs", json=by_name)
    assert refused.status_code == 422 and "needs the network's file" in refused.text
