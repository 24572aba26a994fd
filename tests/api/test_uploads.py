"""POST/GET /v1/uploads: kinds recognised from content, limits, and clean failures."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.files import hdf5_bytes, keras_zip_bytes, npz_bytes
from tests.support.reference_files import reference_weights_bytes


@pytest.mark.parametrize(
    ("name", "content", "kind", "stored"),
    [
        ("model.weights.h5", reference_weights_bytes(), "weights", "source.weights.h5"),
        ("anything.bin", reference_weights_bytes(), "weights", "source.weights.h5"),
        ("m.keras", keras_zip_bytes(), "model", "model.keras"),
        ("my data.npz", npz_bytes(), "dataset", "my_data.npz"),
    ],
)
def test_upload_infers_kind_from_content(client: Any, upload: Any, settings: Any, name: str,
                                         content: bytes, kind: str, stored: str) -> None:
    response = upload(name, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == kind and body["filename"] == name
    assert body["size"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    path = settings.uploads_path / body["id"] / stored
    assert path.read_bytes() == content
    assert client.get(f"/v1/uploads/{body['id']}").json() == body


def test_declared_kind_is_checked(upload: Any) -> None:
    assert upload("w.h5", reference_weights_bytes(), kind="weights").status_code == 201
    response = upload("w.h5", hdf5_bytes(), kind="model")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]
    assert "not a valid model" in response.text
    response = upload("w.h5", hdf5_bytes(), kind="checkpoint")
    assert response.status_code == 422 and "unknown kind" in response.text


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("weights.h5", b"these are not weights\n" * 10, "not an HDF5 file"),
        ("weights.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 50, "damaged HDF5"),
        ("model.keras", b"PK\x03\x04 not really a zip", "not a .keras file"),
        ("data.npz", b"just text", "not a readable .npz"),
        ("data.npz", npz_bytes(y_test=None), "no key y_test"),
        ("data.npz", npz_bytes(y_train=np.zeros(3, dtype=int)), "labels but x_train has"),
        ("data.npz", npz_bytes(x_test=np.array(["a", "b"])), "x_test has dtype"),
        ("data.npz", npz_bytes(y_test=np.zeros((10, 2), dtype=int)), "y_test has dtype"),
        ("notes.txt", b"hello", "cannot tell what this file is"),
    ],
)
def test_disguised_or_broken_upload_is_422(upload: Any, settings: Any, name: str,
                                           content: bytes, reason: str) -> None:
    response = upload(name, content)
    assert response.status_code == 422, response.text
    assert reason in response.text
    assert list(settings.uploads_path.iterdir()) == []  # nothing left behind


def test_object_array_npz_is_refused_without_unpickling(upload: Any) -> None:
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, {"b": 2}]
    response = upload("evil.npz", npz_bytes(x_train=objects))
    assert response.status_code == 422
    assert "dtype object" in response.text  # refused for its object array, not read


def test_oversized_upload_is_413(upload: Any, settings: Any) -> None:
    big = hdf5_bytes({"x": np.zeros(settings.max_upload_bytes // 8 + 10)})
    assert len(big) > settings.max_upload_bytes
    response = upload("big.weights.h5", big)
    assert response.status_code == 413
    assert str(settings.max_upload_bytes) in response.text
    assert list(settings.uploads_path.iterdir()) == []


def test_upload_streamed_without_content_length_still_limited(client: Any, settings: Any) -> None:
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="w.h5"\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Any:
        yield head
        for _ in range(settings.max_upload_bytes // 65536 + 2):
            yield b"\0" * 65536
        yield tail

    response = client.post("/v1/uploads", content=chunks(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert list(settings.uploads_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": {"kind": "weights"}}, 422),  # no file field
        ({"files": {"other": ("w.h5", hdf5_bytes())}}, 422),
        ({"json": {"file": "x"}}, 422),
        ({"content": b"--x\r\nbroken", "headers": {"content-type":
                                                    "multipart/form-data; boundary=x"}}, 422),
    ],
)
def test_malformed_upload_request(client: Any, kwargs: dict[str, Any], status: int) -> None:
    response = client.post("/v1/uploads", **kwargs)
    assert response.status_code == status, response.text


def test_unknown_upload_is_404(client: Any) -> None:
    assert client.get("/v1/uploads/nosuchupload").status_code == 404


def test_list_uploads(client: Any, upload: Any) -> None:
    ids = [upload(f"w{i}.h5", reference_weights_bytes()).json()["id"] for i in range(3)]
    upload("d.npz", npz_bytes())
    page = client.get("/v1/uploads", params={"kind": "weights", "limit": 2}).json()
    assert page["total"] == 3 and [u["id"] for u in page["items"]] == ids[:0:-1]
    assert page["next"] == "/v1/uploads?kind=weights&limit=2&offset=2"
    assert client.get("/v1/uploads").json()["total"] == 4


def test_upload_filename_cannot_escape(upload: Any, settings: Any) -> None:
    response = upload("../../../../etc/evil.npz", npz_bytes())
    assert response.status_code == 201
    body = response.json()
    assert body["filename"] == "evil.npz"
    stored = list((settings.uploads_path / body["id"]).iterdir())
    assert [p.name for p in stored] == ["evil.npz"]
    assert all(Path(p).resolve().is_relative_to(settings.uploads_path) for p in stored)
