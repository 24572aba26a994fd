"""The network of a source weights file, through the API: a weights upload that fits
neither network is refused naming expected and found shapes; a transfer, study or scores
spec's `source_weights` must fit its network at its width; a spec without `architecture`
gets the file's written into the job, so the job and a study's children keep it."""

from __future__ import annotations

from typing import Any

import pytest

from quanta_spec.networks import expected_shapes
from tests.support.reference_files import WIDTH, reference_weights_bytes, shapes_bytes


def transfer_spec(weights: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"source_task": "digits", "target_task": "digits", "source_weights": weights,
            "layer_to_transfer": 0, "nb_of_target_epochs": 1, "nb_of_target_samples": 64,
            "width_multiplier": WIDTH, **extra}


def weights_upload(upload: Any, content: bytes) -> str:
    response = upload("SourceModel.weights.h5", content)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("architecture", ["kes2021", "compact2025"])
def test_a_spec_without_architecture_gets_the_files(client: Any, upload: Any,
                                                    architecture: str) -> None:
    weights = weights_upload(upload, reference_weights_bytes(architecture))
    response = client.post("/v1/jobs", json={"kind": "transfer",
                                             "spec": transfer_spec({"upload": weights})})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["spec"]["architecture"] == architecture
    assert client.get(f"/v1/jobs/{job['id']}").json()["spec"]["architecture"] == architecture


def test_a_retry_without_architecture_replays_the_job(client: Any, upload: Any) -> None:
    weights = weights_upload(upload, reference_weights_bytes("compact2025"))
    body = {"kind": "transfer", "spec": transfer_spec({"upload": weights})}
    headers = {"Idempotency-Key": "network-retry"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    other = {**body, "spec": {**body["spec"], "nb_of_target_epochs": 2}}
    assert client.post("/v1/jobs", json=other, headers=headers).status_code == 422


def test_a_study_and_its_children_keep_the_files_network(client: Any, upload: Any) -> None:
    weights = weights_upload(upload, reference_weights_bytes("compact2025"))
    spec = {k: v for k, v in transfer_spec({"upload": weights}).items()
            if k != "layer_to_transfer"}
    response = client.post("/v1/jobs", json={"kind": "study", "spec": {
        **spec, "layers": [0, 6], "nb_of_runs": 2}})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["spec"]["architecture"] == "compact2025"
    children = client.get(f"/v1/jobs/{study['id']}/children").json()["items"]
    assert len(children) == 4
    assert {child["spec"]["architecture"] for child in children} == {"compact2025"}


def test_a_named_network_must_fit(client: Any, upload: Any) -> None:
    weights = weights_upload(upload, reference_weights_bytes("compact2025"))
    for extra, message in [
        ({"architecture": "kes2021"}, "layer conv_4 expects shapes (3, 3, 8, 32), (32,), "
                                      "found (3, 3, 8, 16), (16,)"),
        ({"width_multiplier": 0.125}, "fit neither network at width_multiplier 0.125"),
    ]:
        response = client.post("/v1/jobs", json={
            "kind": "transfer", "spec": transfer_spec({"upload": weights}, **extra)})
        assert response.status_code == 422, response.text
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["body", "spec", "source_weights"]
        assert message in detail["msg"], detail["msg"]
    good = transfer_spec({"upload": weights}, architecture="compact2025")
    assert client.post("/v1/jobs", json={"kind": "transfer", "spec": good}).status_code == 201


def test_a_source_jobs_weights_are_checked_too(client: Any, source_job: Any) -> None:
    spec = transfer_spec({"job": source_job.id})
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert response.status_code == 201 and response.json()["spec"]["architecture"] == "kes2021"
    bad = transfer_spec({"job": source_job.id}, architecture="compact2025")
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": bad})
    assert response.status_code == 422 and "expects shapes" in response.text


def test_weights_that_fit_neither_network_are_refused_at_upload(upload: Any) -> None:
    shapes = expected_shapes("kes2021", WIDTH, (8, 8, 1), 10)
    # The last block has 20 filters: 64-128-512 has 32 at this width, 64-128-256 has 16.
    shapes.update(conv_4=((3, 3, 8, 20), (20,)), bn_4=((20,),) * 4,
                  conv_5=((3, 3, 20, 20), (20,)), bn_5=((20,),) * 4,
                  dense_6=((20, 128), (128,)))
    response = upload("odd.weights.h5", shapes_bytes(shapes))
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "file"]
    assert "fit neither network at any width" in detail["msg"]
    assert "found filters 4-4-8-8-20-20 + Dense(128)" in detail["msg"]
    assert "kes2021 (filters 64-64-128-128-512-512 + Dense(2048))" in detail["msg"]
    # Widths of one network, but a layer that does not chain: named with its shapes.
    broken = expected_shapes("compact2025", WIDTH, (8, 8, 1), 10)
    broken["conv_3"] = ((3, 3, 4, 8), (8,))
    response = upload("broken.weights.h5", shapes_bytes(broken))
    assert response.status_code == 422
    assert "layer conv_3 expects shapes (3, 3, 8, 8), (8,), found (3, 3, 4, 8), (8,)" in \
        response.json()["detail"][0]["msg"]


def test_a_target_the_reference_saved_is_accepted(client: Any, upload: Any,
                                                  tmp_path: Any) -> None:
    """The reference's `.keras` names its unregistered QuantaLayer from module
    `quanta_layer`: accepted, so that train_from_previous_training continues its run."""
    from tests.support.reference_models import flat_source, flat_target

    source = flat_source("kes2021")
    source.save_weights(tmp_path / "SourceModel.weights.h5")
    flat = flat_target(source, [2])
    flat.compile(optimizer="adam", loss="categorical_crossentropy",
                 metrics=["categorical_accuracy"])
    flat.save(tmp_path / "target_r_0_l_2.keras")
    weights = weights_upload(upload, (tmp_path / "SourceModel.weights.h5").read_bytes())
    response = upload("target_r_0_l_2.keras", (tmp_path / "target_r_0_l_2.keras").read_bytes())
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "model"
    spec = transfer_spec({"upload": weights}, layer_to_transfer=2,
                         train_from_previous_training={"upload": response.json()["id"]})
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec})
    assert response.status_code == 201, response.text


def test_the_kes2021_protocol_makes_seven_layers_of_thirty_runs(client: Any,
                                                                source_job: Any) -> None:
    response = client.post("/v1/jobs", json={"kind": "study", "spec": {
        "source_task": "digits", "target_task": "digits", "source_weights": {"job": source_job.id},
        "protocol": "kes2021", "width_multiplier": WIDTH, "nb_of_target_samples": 32}})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["progress"]["total"] == 7 * 30
    assert study["spec"]["protocol"] == "kes2021"
    children = client.get(f"/v1/jobs/{study['id']}/children", params={"limit": 500}).json()
    assert children["total"] == 210
    child = children["items"][0]["spec"]
    assert (child["nb_of_target_epochs"], child["augment_data"], child["test_every_epoch"],
            child["architecture"], child["nb_of_runs"]) == (60, True, True, "kes2021", 1)
    # Every field still overridable.
    response = client.post("/v1/jobs", json={"kind": "study", "spec": {
        "source_task": "digits", "target_task": "digits", "source_weights": {"job": source_job.id},
        "protocol": "kes2021", "width_multiplier": WIDTH, "layers": [6], "nb_of_runs": 2,
        "test_every_epoch": False}})
    assert response.status_code == 201, response.text
    assert response.json()["progress"]["total"] == 2
    assert response.json()["spec"]["test_every_epoch"] is False
