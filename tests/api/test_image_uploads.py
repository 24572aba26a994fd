"""Image zips through the real API (`POST /v1/uploads`, then named in jobs): recognised by
their content as the kind `images`, stored under their stem, resolved to `images:` tasks,
counted by the quotas, uploaded by `quanta-client`; and each hostile zip a user could
send instead (a zip bomb, a decompression-bomb PNG, paths out of the folder, a symbolic
link, more members than allowed, a member that is no image, images of several sizes)
refused with a 422 naming the reason, and nothing of it left stored.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from quanta_client.api import Client
from quanta_client.specs import Files, Usage
from quanta_jobs.refs import remote_spec, resolve_spec
from tests.support.files import npz_bytes
from tests.support.image_zips import (
    digit_members,
    digits,
    encode,
    held_out_zip,
    many_members_zip,
    png_declaring,
    split_zip,
    symlink_zip,
    zip_bytes,
)

MiB = 1024 * 1024


def spec(source_job: Any, **fields: Any) -> dict[str, Any]:
    return {"source_task": "digits", "target_task": "digits",
            "source_weights": {"job": source_job.id}, "layer_to_transfer": 0,
            "nb_of_target_epochs": 2, "width_multiplier": 0.0625, **fields}


def assert_refused(response: Any, settings: Any, *reasons: str) -> str:
    """A 422 on the file naming every reason, and nothing kept of the upload."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    for reason in reasons:
        assert reason in error["msg"], error["msg"]
    assert list(settings.uploads_path.iterdir()) == []  # no partial file, nothing stored
    return str(error["msg"])


# --- what is accepted ---------------------------------------------------------------------
@pytest.mark.parametrize(("name", "content", "stored"), [
    ("my digits.zip", held_out_zip(per_class=6, formats=("PNG", "JPEG")), "my_digits.zip"),
    ("anything.bin", split_zip(train=3, test=1, prefix="top/", formats=("BMP", "GIF")),
     "anything.zip"),
])
def test_an_image_zip_is_recognised_by_its_content(client: Any, upload: Any, settings: Any,
                                                   name: str, content: bytes,
                                                   stored: str) -> None:
    response = upload(name, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "images" and body["filename"] == name
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (settings.uploads_path / body["id"] / stored).read_bytes() == content
    listed = client.get("/v1/uploads", params={"kind": "images"}).json()
    assert [item["id"] for item in listed["items"]] == [body["id"]]


def test_the_declared_kind_is_checked_both_ways(upload: Any, settings: Any) -> None:
    images = held_out_zip(per_class=5, classes=2)
    assert_refused(upload("d.zip", images, kind="dataset"), settings, "not a valid dataset")
    assert_refused(upload("d.npz", npz_bytes(), kind="images"), settings,
                   "not a valid images file", "no image in class folders")
    assert upload("d.zip", images, kind="images").status_code == 201


def test_jobs_take_an_image_upload_as_a_task(client: Any, upload: Any, settings: Any,
                                             db: Any, source_job: Any) -> None:
    zipped = upload("pets.zip", held_out_zip(per_class=12)).json()["id"]
    body = {"kind": "transfer", "spec": spec(source_job, source_task={"upload": zipped},
                                              target_task={"upload": zipped})}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["spec"]["target_task"] == {"upload": zipped}
    # What the worker runs: the stored zip as an `images:` task, named by its stem.
    local = resolve_spec(db, settings, remote_spec("transfer", job["spec"]))
    assert local.target_task == f"images:{settings.uploads_path / zipped / 'pets.zip'}"
    assert local.source_task == local.target_task
    # The quota counts the training split: 12 a class, 2 held out -> 100 images.
    settings.max_job_work = 150
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "spec", "nb_of_target_epochs"]
    assert "2 epochs × 100 samples = 200" in error["msg"]
    # An image upload is a dataset, not weights.
    response = client.post("/v1/jobs", json={"kind": "transfer", "spec": spec(
        source_job, source_weights={"upload": zipped})})
    assert response.status_code == 422
    assert "is a images file; source_weights needs a weights upload" in response.text


def test_quanta_client_uploads_images_tasks(client: Any, settings: Any, tmp_path: Path) -> None:
    """`quanta-client -t images:PATH.zip`, through the real API: uploaded as `images`."""
    path = tmp_path / "flowers.zip"
    path.write_bytes(held_out_zip(per_class=5, classes=3))
    api = Client("http://testserver", None, transport=client._transport)
    files = Files(api, out=lambda line: None)
    reference = files.task(f"images:{path}", "-t/--target_task")
    assert files.task(str(path), "-s/--source_task") == reference  # uploaded once
    stored = client.get(f"/v1/uploads/{reference['upload']}").json()
    assert stored["kind"] == "images" and stored["filename"] == "flowers.zip"
    with pytest.raises(Usage, match=re.escape("must be a '.zip' file (images:PATH.zip)")):
        files.task(f"images:{tmp_path / 'flowers.tar'}", "-t/--target_task")


# --- hostile zips ---------------------------------------------------------------------------
def test_a_zip_bomb_member(upload: Any, settings: Any) -> None:
    settings.max_upload_bytes = 64 * MiB  # within the upload limit: the ratio refuses it
    members = digit_members(5, classes=2) | {"1/huge.png": b"\0" * (48 * MiB)}
    content = zip_bytes(members)
    assert len(content) < MiB
    assert_refused(upload("bomb.zip", content), settings, "'1/huge.png' would inflate from",
                   "zip bomb")


def test_a_zip_unpacking_past_the_upload_limit(upload: Any, settings: Any) -> None:
    members = digit_members(5, classes=2) | {f"1/pad{i}.png": b"\0" * (MiB // 2)
                                             for i in range(3)}
    assert_refused(upload("big.zip", zip_bytes(members)), settings,
                   "unpacked, over the limit of 1048576 (QUANTA_MAX_UPLOAD_BYTES)")


@pytest.mark.parametrize(("side", "reason"), [
    (100_000, "declares more than 16777216 pixels"),
    (5_000, "is 5000x5000 = 25000000 pixels"),
])
def test_a_decompression_bomb_png(upload: Any, settings: Any, side: int, reason: str) -> None:
    members = digit_members(5, classes=2) | {"1/bomb.png": png_declaring(side, side)}
    content = zip_bytes(members)
    assert len(content) < 10_000
    assert_refused(upload("bomb.zip", content), settings, "'1/bomb.png'", reason,
                   "QUANTA_MAX_IMAGE_PIXELS")


@pytest.mark.parametrize(("name", "reason"), [
    ("../outside.png", "'..' or '.' step"),
    ("0/../../outside.png", "'..' or '.' step"),
    ("/etc/cron.d/x.png", "is an absolute path"),
    ("C:/Windows/x.png", "drive letter"),
    ("0\\..\\x.png", "backslash"),
])
def test_member_paths_out_of_the_folder(upload: Any, settings: Any, name: str,
                                        reason: str) -> None:
    x, _ = digits()
    members = digit_members(5, classes=2) | {name: encode(x[0])}
    assert_refused(upload("paths.zip", zip_bytes(members)), settings, repr(name), reason)


def test_a_duplicate_member(upload: Any, settings: Any) -> None:
    name = next(n for n in digit_members(5, classes=2) if n.startswith("1/")).split("/")[1]
    buffer = io.BytesIO(zip_bytes(digit_members(5, classes=2)))
    with zipfile.ZipFile(buffer, "a") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr(f"1/{name}", encode(digits()[0][7]))
    assert_refused(upload("dup.zip", buffer.getvalue()), settings, f"'1/{name}' appears twice")


def test_a_symlink_member(upload: Any, settings: Any) -> None:
    assert_refused(upload("link.zip", symlink_zip("/proc/self/environ")), settings,
                   "'1/img_link.png' is a symbolic link")


def test_many_members_over_a_lowered_cap(upload: Any, settings: Any) -> None:
    settings.max_image_files = 2000
    content = many_members_zip(2001)
    assert len(content) < MiB
    assert_refused(upload("many.zip", content), settings,
                   "more than 2000 members (QUANTA_MAX_IMAGE_FILES)")


def test_a_member_that_is_not_an_image(upload: Any, settings: Any) -> None:
    members = digit_members(5, classes=2) | {"1/script.png": b"#!/bin/sh\nrm -rf /\n"}
    assert_refused(upload("mixed.zip", zip_bytes(members)), settings,
                   "'1/script.png' is not a PNG, JPEG, BMP or GIF image")


def test_images_of_several_sizes(upload: Any, settings: Any) -> None:
    x, _ = digits()
    members = digit_members(5, classes=2) | {"0/wide.png": encode(x[0][:, :16])}
    message = assert_refused(upload("sizes.zip", zip_bytes(members)), settings,
                             "several sizes", "'0/wide.png' is 16x32", "32x32",
                             "source_model")
    assert "\n" not in message
