"""Uploaded files that point outside themselves, declare more than they hold, or name
classes the QUANTA networks never use: each is built for real (h5py, zipfile, NumPy
headers), uploaded, and refused with a 422 that says why, and refused again by the
checks the worker runs before loading (`quanta_jobs.file_checks.check_spec_files`).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from quanta_jobs.errors import Invalid
from quanta_jobs.file_checks import (
    FileLimits,
    check_hdf5,
    check_spec_files,
    read_keras_config,
)
from quanta_spec import TransferSpec

SECRET = b"QUANTA_DATABASE_URL=postgresql://quanta:hunter2@db/quanta\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file of the server's disk a hostile upload tries to read (another owner's
    upload, a worker's environment)."""
    path = tmp_path / "secret.env"
    path.write_bytes(SECRET)
    return path


def _h5(path: Path, build: Any) -> bytes:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("dense/kernel", data=np.ones((4, 4), "f4"))
        build(handle)
    return path.read_bytes()


def _external_storage(tmp: Path, secret: Path) -> bytes:
    return _h5(tmp / "ext.h5", lambda f: f.create_dataset(
        "dense/bias", shape=(len(SECRET),), dtype="u1",
        external=[(str(secret), 0, len(SECRET))]))


def _external_link(tmp: Path, secret: Path) -> bytes:
    other = tmp / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("data", data=np.frombuffer(SECRET, "u1"))
    return _h5(tmp / "link.h5", lambda f: f.__setitem__(
        "dense/bias", h5py.ExternalLink(str(other), "/data")))


def _soft_link(tmp: Path, secret: Path) -> bytes:
    return _h5(tmp / "soft.h5", lambda f: f.__setitem__("dense/bias",
                                                         h5py.SoftLink("/dense/kernel")))


def _virtual(tmp: Path, secret: Path) -> bytes:
    other = tmp / "source.h5"
    with h5py.File(other, "w") as handle:
        handle.create_dataset("data", data=np.frombuffer(SECRET, "u1"))

    def build(handle: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="u1")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(len(SECRET),))
        handle.create_virtual_dataset("dense/bias", layout)

    return _h5(tmp / "virtual.h5", build)


def _shape_bomb(tmp: Path, secret: Path) -> bytes:
    return _h5(tmp / "bomb.h5", lambda f: f.create_dataset(
        "dense/bias", shape=(10**10,), dtype="f4", chunks=(1 << 16,), compression="gzip"))


def _deep_groups(tmp: Path, secret: Path, depth: int = 200) -> bytes:
    """Groups nested `depth` deep: 3000 once ended the upload check's recursive walk in a
    RecursionError (a 500); no saved model nests more than a few levels."""
    return _h5(tmp / "deep.h5", lambda f: f.create_group("/".join(["g"] * depth)))


def test_3000_nested_groups_are_refused_not_recursed(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "x.h5").write_bytes(_deep_groups(tmp_path, secret, depth=3000))
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        check_hdf5(tmp_path / "x.h5")


HOSTILE_H5 = {
    "external_storage": (_external_storage, "external files"),
    "external_link": (_external_link, "external link"),
    "soft_link": (_soft_link, "soft link"),
    "virtual_dataset": (_virtual, "virtual dataset"),
    "shape_bomb": (_shape_bomb, "declare"),
    "deep_groups": (_deep_groups, "nested deeper than"),
}


def test_the_attacks_are_real(tmp_path: Path, secret: Path) -> None:
    """Read naively, these files hand over another file's bytes: what the check stops."""
    for name in ("external_storage", "external_link", "virtual_dataset"):
        content = HOSTILE_H5[name][0](tmp_path, secret)
        (tmp_path / "x.h5").write_bytes(content)
        with h5py.File(tmp_path / "x.h5", "r") as handle:
            assert handle["dense/bias"][()].tobytes() == SECRET, name


@pytest.mark.parametrize("name", sorted(HOSTILE_H5))
def test_hostile_weights_are_refused_at_upload(upload: Any, tmp_path: Path, secret: Path,
                                               name: str) -> None:
    build, reason = HOSTILE_H5[name]
    response = upload("source.weights.h5", build(tmp_path, secret))
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"][0]["msg"]
    assert "hunter2" not in response.text


def _keras(config: dict[str, Any], weights: bytes | None = None,
           extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", "{}")
        if weights is not None:
            archive.writestr("model.weights.h5", weights)
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


FUNCTIONAL = {"module": "keras.src.models.functional", "class_name": "Functional",
              "registered_name": "Functional", "config": {"layers": []}}


@pytest.mark.parametrize("name", ["external_storage", "external_link", "virtual_dataset"])
def test_hostile_weights_inside_a_keras_file_are_refused(upload: Any, tmp_path: Path,
                                                         secret: Path, name: str) -> None:
    build, reason = HOSTILE_H5[name]
    response = upload("m.keras", _keras(FUNCTIONAL, build(tmp_path, secret)))
    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert "model.weights.h5" in message and reason in message


def _layer(class_name: str, module: str = "keras.layers", **config: Any) -> dict[str, Any]:
    return {"module": module, "class_name": class_name, "config": config,
            "registered_name": None}


@pytest.mark.parametrize(("layer", "reason"), [
    # reads a vocabulary file named in the config (Keras' own file-read advisories)
    (_layer("StringLookup", vocabulary="/etc/passwd"), "StringLookup"),
    (_layer("TextVectorization"), "TextVectorization"),
    (_layer("Dense", module="evil.module", units=4), "evil.module"),
    ({**_layer("Dense", units=4), "registered_name": "evil>Dense"}, "Dense"),
    (_layer("Lambda", function="x"), "Python code"),
])
def test_model_classes_outside_the_allow_list_are_refused(upload: Any, layer: dict[str, Any],
                                                         reason: str) -> None:
    config = {**FUNCTIONAL, "config": {"layers": [layer]}}
    response = upload("m.keras", _keras(config))
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"][0]["msg"]


def test_a_model_with_other_members_is_refused(upload: Any) -> None:
    response = upload("m.keras", _keras(FUNCTIONAL, extra={"assets/vocab.txt": b"a\nb\n"}))
    assert response.status_code == 422
    assert "assets/vocab.txt" in response.text


@pytest.mark.parametrize("layer", [
    {**_layer("Dense", units=200_000), "build_config": {"input_shape": [None, 100_000]}},
    {**_layer("Conv2D", filters=50_000, kernel_size=[32, 32]),
     "build_config": {"input_shape": [None, 32, 32, 64]}},
])
def test_a_model_declaring_huge_layers_is_refused(upload: Any, layer: dict[str, Any]) -> None:
    response = upload("m.keras", _keras({**FUNCTIONAL, "config": {"layers": [layer]}}))
    assert response.status_code == 422, response.text
    assert "QUANTA_MAX_MODEL_PARAMS" in response.text


@pytest.mark.parametrize("network", ["source", "augmented", "target", "compact2025"])
def test_real_quanta_models_are_accepted(upload: Any, tmp_path: Path, network: str) -> None:
    """Models built and saved by the library itself pass the allow-list."""
    pytest.importorskip("keras")
    from quanta.models import build_model

    architecture = "compact2025" if network == "compact2025" else "kes2021"
    model = build_model((8, 8, 1), 10, width_multiplier=0.0625, architecture=architecture,
                        augment=network == "augmented")
    if network == "target":
        model = build_model((8, 8, 1), 10, width_multiplier=0.0625, source=model,
                            transfer_layers=[0, 6])
    model.save(tmp_path / "m.keras")
    response = upload("m.keras", (tmp_path / "m.keras").read_bytes())
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "model"  # accepted as the model it is


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def _npz(x_train: tuple[int, ...], x_dtype: str = "|u1", n_test: int = 5) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", _npy_header(x_train, x_dtype))
        archive.writestr("y_train.npy", _npy_header((x_train[0],), "<i8"))
        archive.writestr("x_test.npy", _npy_header((n_test, *x_train[1:]), x_dtype))
        archive.writestr("y_test.npy", _npy_header((n_test,), "<i8"))
    return buffer.getvalue()


@pytest.mark.parametrize(("x_train", "dtype", "reason"), [
    ((2_000_000, 32, 32, 3), "<f8", "QUANTA_MAX_DATASET_BYTES"),  # 49 GB declared
    ((10, 100_000, 100_000), "|u1", "QUANTA_MAX_IMAGE_SIDE"),
    ((10, 32, 32, 4096), "|u1", "channels"),
])
def test_dataset_shape_bombs_are_refused(upload: Any, x_train: tuple[int, ...], dtype: str,
                                         reason: str) -> None:
    content = _npz(x_train, dtype)
    assert len(content) < 4096  # a few hundred bytes claiming gigabytes
    response = upload("d.npz", content)
    assert response.status_code == 422, response.text
    assert reason in response.text


def test_the_worker_checks_again_before_loading(tmp_path: Path, secret: Path) -> None:
    """A file that reached the disk some other way (an older service, a replaced file)
    is refused by the worker's own check, naming the field."""
    weights = tmp_path / "source.weights.h5"
    weights.write_bytes(_external_storage(tmp_path, secret))
    spec = TransferSpec(source_task="digits", source_weights=str(weights),
                        target_task="digits", layer_to_transfer=0)
    with pytest.raises(Invalid, match=r"source_weights .* external files"):
        check_spec_files(spec, FileLimits())
    dataset = tmp_path / "bomb.npz"
    dataset.write_bytes(_npz((2_000_000, 32, 32, 3), "<f8"))
    spec = TransferSpec(source_task="digits", source_weights=str(tmp_path / "ok.weights.h5"),
                        target_task=f"npz:{dataset}", layer_to_transfer=0)
    (tmp_path / "ok.weights.h5").write_bytes(_h5(tmp_path / "ok.weights.h5", lambda f: None))
    with pytest.raises(Invalid, match=r"target_task .*QUANTA_MAX_DATASET_BYTES"):
        check_spec_files(spec, FileLimits())
    assert check_hdf5(tmp_path / "ok.weights.h5") == 64


def test_the_worker_refuses_a_file_replaced_after_upload(client: Any, upload: Any,
                                                        settings: Any, tmp_path: Path,
                                                        secret: Path) -> None:
    """A real runner, on a job whose weights file was replaced on disk after its upload
    passed: the job fails naming the field, before any loader (or TensorFlow) runs."""
    from tests.support.reference_files import reference_weights_bytes
    from worker.runner import JobRunner

    uploaded = upload("source.weights.h5", reference_weights_bytes())
    assert uploaded.status_code == 201, uploaded.text
    job = client.post("/v1/jobs", json={"kind": "transfer", "spec": {
        "source_task": "digits", "target_task": "digits", "layer_to_transfer": 0,
        "source_weights": {"upload": uploaded.json()["id"]}, "width_multiplier": 0.0625,
        "nb_of_target_samples": 64}})
    assert job.status_code == 201, job.text
    stored = next(settings.uploads_path.rglob("source.weights.h5"))
    stored.write_bytes(_external_storage(tmp_path, secret))
    outcome = JobRunner(settings).run(job.json()["id"], "w1@test")
    assert outcome.status == "failed"
    body = client.get(f"/v1/jobs/{job.json()['id']}").json()
    assert body["status"] == "failed"
    assert "source_weights" in body["error"] and "external files" in body["error"]
    assert "hunter2" not in json.dumps(body)


def test_every_model_load_passes_safe_mode() -> None:
    """Each `load_model` call of the library and the worker says `safe_mode=True` itself
    (not the default, which a Keras release or a config could change)."""
    import ast

    from tests.support import REPO

    calls = []
    for package in ("quanta", "worker"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "load_model"):
                    safe = [k for k in node.keywords if k.arg == "safe_mode"]
                    calls.append((path.name, node.lineno, bool(safe) and isinstance(
                        safe[0].value, ast.Constant) and safe[0].value.value is True))
    assert calls, "no load_model call found"
    assert all(ok for *_, ok in calls), [c for c in calls if not c[2]]


def _bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps(FUNCTIONAL))
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            zeros = bytes(16 * 1024 * 1024)
            for _ in range(25):
                member.write(zeros)
    return buffer.getvalue()


def test_a_small_keras_that_inflates_to_gigabytes_is_refused_from_its_directory(
        upload: Any, tmp_path: Path, settings: Any) -> None:
    """A .keras of a few hundred KB whose model.weights.h5 inflates to 400 MiB of zeros was
    inflated to disk before it was refused; the zip's own directory says it, first (here
    its total, over these tests' small upload limit; under the default limit of 1 GiB,
    its ratio: `read_keras_config` below)."""
    content = _bomb()
    assert len(content) < 1024 * 1024  # cheap to send
    response = upload("bomb.keras", content)
    assert response.status_code == 422, response.text
    assert "bytes unpacked, over the limit" in response.json()["detail"][0]["msg"]
    (tmp_path / "bomb.keras").write_bytes(content)
    with pytest.raises(ValueError, match=r"would inflate from .* more than 50 times"):
        read_keras_config(tmp_path / "bomb.keras", FileLimits())
    # Nothing of it was unpacked beside the uploads.
    assert not any(p.is_file() and p.stat().st_size > 2 * 1024 * 1024
                   for p in settings.uploads_dir.parent.rglob("*"))


def test_an_hdf5_of_too_many_groups_is_refused_before_it_is_walked_whole(
        tmp_path: Path) -> None:
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as handle:
        for i in range(10_001):
            handle.create_group(f"g{i}")
    with pytest.raises(ValueError, match="more than 10000 groups and datasets"):
        check_hdf5(path)


def test_at_most_max_concurrent_checks_uploads_are_checked_at_once(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight uploads sent at once: their content checks run two at a time (the setting's
    default), the rest wait, and every upload is stored."""
    import threading

    from quanta_jobs import upload_intake

    running, most, started = [0], [0], [0]
    changed = threading.Condition()
    settle = upload_intake._settle

    def watched(*args: Any) -> Any:
        with changed:
            running[0] += 1
            started[0] += 1
            most[0] = max(most[0], running[0])
            changed.notify_all()
            # a check holds until a second one runs beside it (or no other is left to
            # come): the overlap the limit allows is made, not left to timing; a limit of
            # one would hold each for the bound, then fail on `most` below
            changed.wait_for(lambda: running[0] >= 2 or started[0] == 8, timeout=30)
        try:
            return settle(*args)
        finally:
            with changed:
                running[0] -= 1
                changed.notify_all()

    monkeypatch.setattr(upload_intake, "_settle", watched)
    content = _keras(FUNCTIONAL)
    results: list[int] = []

    def send() -> None:
        response = client.post("/v1/uploads", files={"file": ("m.keras", content)})
        results.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [201] * 8, results
    assert client.app.state.settings.max_concurrent_checks == 2
    assert most[0] == 2, most  # two at a time; without the limit, up to all eight at once
