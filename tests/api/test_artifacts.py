"""Artifacts: listing, downloads (types, ETag, 304), the zip archive, and path safety."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from typing import Any

import pytest

from tests.support.files import hdf5_bytes, keras_zip_bytes
from tests.support.jobs import TINY_SOURCE

FILES = {
    "digits_to_digits/quantas_r_0_l_0.jsonl": b'{"0": {"quantas": {"source": [0.9]}}}\n',
    "digits_to_digits/target_r_0_l_0.keras": keras_zip_bytes(),
    "digits_to_digits/source.weights.h5": hdf5_bytes(),
    "digits_to_digits/plot.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
}


@pytest.fixture
def done(finished_job: Any) -> Any:
    return finished_job("transfer", {"layer_to_transfer": 0}, FILES)


def test_list_artifacts(client: Any, done: Any) -> None:
    body = client.get(f"/v1/jobs/{done.id}/artifacts").json()
    assert body["job_id"] == done.id
    items = {item["path"]: item for item in body["items"]}
    assert set(items) == set(FILES)
    for path, content in FILES.items():
        assert items[path]["size"] == len(content)
        assert items[path]["sha256"] == hashlib.sha256(content).hexdigest()
        assert items[path]["url"] == f"/v1/jobs/{done.id}/artifacts/{path}"


def test_list_artifacts_of_unknown_job_is_404(client: Any) -> None:
    assert client.get("/v1/jobs/nosuchjob/artifacts").status_code == 404


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("digits_to_digits/quantas_r_0_l_0.jsonl", "application/jsonl"),
        ("digits_to_digits/target_r_0_l_0.keras", "application/zip"),
        ("digits_to_digits/source.weights.h5", "application/x-hdf5"),
        ("digits_to_digits/plot.png", "image/png"),
    ],
)
def test_download_with_type_and_etag(client: Any, done: Any, path: str,
                                     content_type: str) -> None:
    response = client.get(f"/v1/jobs/{done.id}/artifacts/{path}")
    assert response.status_code == 200
    assert response.content == FILES[path]
    assert response.headers["content-type"].startswith(content_type)
    digest = hashlib.sha256(FILES[path]).hexdigest()
    assert response.headers["etag"] == f'"{digest}"'
    cached = client.get(f"/v1/jobs/{done.id}/artifacts/{path}",
                        headers={"If-None-Match": f'"{digest}"'})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == f'"{digest}"'
    stale = client.get(f"/v1/jobs/{done.id}/artifacts/{path}",
                       headers={"If-None-Match": '"0000", W/"1111"'})
    assert stale.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "digits_to_digits/nothere.jsonl",
        "..%2F..%2Fetc%2Fpasswd",
        "digits_to_digits%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "digits_to_digits%2F.%2Fquantas_r_0_l_0.jsonl",
        "digits_to_digits//quantas_r_0_l_0.jsonl",
        "digits_to_digits\\quantas_r_0_l_0.jsonl",
    ],
)
def test_paths_outside_or_unrecorded_are_404(client: Any, done: Any, path: str) -> None:
    response = client.get(f"/v1/jobs/{done.id}/artifacts/{path}")
    assert response.status_code in (400, 404), response.text
    assert b"root:" not in response.content


def test_recorded_path_that_became_a_symlink_is_404(client: Any, done: Any,
                                                    settings: Any, tmp_path: Any) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    target = settings.artifacts_dir / done.id / "digits_to_digits/quantas_r_0_l_0.jsonl"
    target.unlink()
    os.symlink(secret, target)
    response = client.get(f"/v1/jobs/{done.id}/artifacts/digits_to_digits/quantas_r_0_l_0.jsonl")
    assert response.status_code == 404 and b"secret" not in response.content


def test_other_jobs_files_are_not_reachable(client: Any, done: Any, finished_job: Any) -> None:
    other = finished_job("source", TINY_SOURCE, {"x.jsonl": b"{}\n"})
    response = client.get(f"/v1/jobs/{other.id}/artifacts/..%2F{done.id}%2F"
                          "digits_to_digits%2Fquantas_r_0_l_0.jsonl")
    assert response.status_code == 404


def test_archive_is_a_zip_of_every_file(client: Any, done: Any) -> None:
    response = client.get(f"/v1/jobs/{done.id}/archive")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert f"quanta-{done.id}.zip" in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == FILES


def test_archive_of_running_job_is_409(client: Any, finished_job: Any) -> None:
    job = finished_job("source", TINY_SOURCE, status="running")
    assert client.get(f"/v1/jobs/{job.id}/archive").status_code == 409
    assert client.get("/v1/jobs/nosuchjob/archive").status_code == 404


def test_archive_streams_large_files_in_pieces(tmp_path: Any) -> None:
    from api.artifacts import zip_stream
    from quanta_jobs.store import LocalStore

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    chunks = list(zip_stream(LocalStore(tmp_path), [("big.bin", "big.bin")]))
    assert len(chunks) >= 3 and max(map(len, chunks)) <= 2 * 1024 * 1024
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.read("big.bin") == big.read_bytes()


@pytest.mark.parametrize(
    ("path", "safe"),
    [("a/b.jsonl", True), ("b.keras", True), ("", False), ("/a", False), ("a/../b", False),
     ("a//b", False), ("./a", False), ("a\\b", False), ("c:x", False), ("a\0b", False)],
)
def test_is_safe_relative(path: str, safe: bool) -> None:
    from api.routes.jobs import _safe

    assert _safe(path) is safe
