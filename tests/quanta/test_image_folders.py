"""`images:PATH.zip` datasets: zips of class folders of real PNG, JPEG, BMP and GIF files
(scikit-learn's digits, written with Pillow), loaded by the library (`quanta.datasets`,
`quanta.image_folders`), resized by `fit_images`, and checked from their directory and
headers by the service's checks (`quanta_jobs.file_checks`), which the worker runs again
before loading (`check_spec_files`). The uploads themselves: test_image_folder_uploads.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quanta import datasets as ds
from quanta.datasets import DatasetError, load_dataset
from quanta.image_folders import fit_images
from quanta_jobs.errors import Invalid
from quanta_jobs.file_checks import (
    FileLimits,
    check_image_zip,
    check_spec_files,
    image_zip_train_size,
    zip_member_count,
)
from quanta_jobs.quotas import planned_work
from quanta_spec import SourceSpec, TransferSpec, task_label
from quanta_spec.images import RESIZE_METHODS
from tests.support import REPO
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

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
           "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX,
           "lanczos": Image.Resampling.LANCZOS}


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    ds.clear_cache()


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# --- loading ------------------------------------------------------------------------------
def test_class_folders_alone_hold_out_every_fifth_image(tmp_path: Path) -> None:
    path = write(tmp_path / "my digits.zip", held_out_zip(per_class=12, formats=("PNG", "JPEG")))
    data = load_dataset(f"images:{path}")
    # 12 a class: the 5th and 10th (by sorted name) are held out -> 10 train, 2 test.
    assert data.x_train.shape == (100, 32, 32, 1) and data.x_test.shape == (20, 32, 32, 1)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    assert data.nb_classes == 10 and data.name == "my digits"
    assert np.bincount(data.y_train).tolist() == [10] * 10
    assert np.bincount(data.y_test).tolist() == [2] * 10
    # interleaved class by class: the first 10 samples hold every class once
    assert data.y_train[:20].tolist() == list(range(10)) * 2
    assert data.take(10).y_train.tolist() == list(range(10))
    # The PNG files (lossless) come back exactly: class 0's files alternate PNG, JPEG...
    x, y = digits()
    rows = np.flatnonzero(y == 0)[:12]
    assert np.array_equal(data.x_train[0, ..., 0], x[rows[0]])  # its 1st file, a PNG
    assert np.array_equal(data.x_test[0, ..., 0], x[rows[4]])  # its 5th, held out: a PNG
    # JPEG is lossy, but close: its 2nd file (2nd training image) and its 10th (held out)
    assert np.abs(data.x_train[10, ..., 0].astype(int) - x[rows[1]]).mean() < 8
    assert np.abs(data.x_test[10, ..., 0].astype(int) - x[rows[9]]).mean() < 8
    assert not np.array_equal(data.x_test[10, ..., 0], x[rows[4]])


def test_train_and_test_folders_under_one_top_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "colours.zip",
                 split_zip(train=6, test=2, prefix="colours/", colour=True,
                           formats=("PNG", "BMP", "GIF")))
    data = load_dataset(f"images:{path}")
    assert data.x_train.shape == (60, 32, 32, 3) and data.x_test.shape == (20, 32, 32, 3)
    assert np.bincount(data.y_test).tolist() == [2] * 10
    x, y = digits()
    zero = np.flatnonzero(y == 0)[0]  # train/0/ first file: a PNG (lossless)
    assert np.array_equal(data.x_train[0, ..., 2], 255 - x[zero])
    assert task_label(f"images:{path}") == "colours"


def test_classes_are_the_sorted_folder_names(tmp_path: Path) -> None:
    x, _ = digits()
    members = {f"{name}/{i}.png": encode(x[i]) for name in ("zebra", "ant", "Moth")
               for i in range(5)}
    data = load_dataset(f"images:{write(tmp_path / 'a.zip', zip_bytes(members))}")
    # "Moth" < "ant" < "zebra" (code points): labels 0, 1, 2; one of each 5 held out.
    assert data.nb_classes == 3 and data.y_test.tolist() == [0, 1, 2]
    assert np.array_equal(data.x_test[2, ..., 0], x[4])  # zebra/4.png, the 5th


def test_content_decides_and_clutter_is_ignored(tmp_path: Path) -> None:
    x, _ = digits()
    members = digit_members(5, classes=2)
    members["1/photo.jpg"] = encode(x[100], "PNG")  # a PNG named .jpg: read as what it is
    members["0/anim.gif"] = encode(x[101], "GIF")
    members |= {"README.txt": b"my dataset", "0/.DS_Store": b"\0\1", "1/Thumbs.db": b"x",
                "__MACOSX/0/._img.png": b"\0", ".hidden/x.png": b"x"}
    buffer = io.BytesIO(zip_bytes(members))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(zipfile.ZipInfo("0/"), b"")  # directory entries are fine
    data = load_dataset(f"images:{write(tmp_path / 'c.zip', buffer.getvalue())}")
    assert len(data.y_train) + len(data.y_test) == 12
    assert data.input_shape == (32, 32, 3)  # the GIF is a palette image: colour


def test_a_member_that_is_not_an_image_is_named(tmp_path: Path) -> None:
    members = digit_members(5, classes=2) | {"1/notes.png": b"not an image at all"}
    path = write(tmp_path / "n.zip", zip_bytes(members))
    with pytest.raises(DatasetError) as error:
        load_dataset(f"images:{path}")
    message = str(error.value)
    assert "'1/notes.png' is not a PNG, JPEG, BMP or GIF image" in message
    assert "\n" not in message


def test_several_sizes_need_a_shape(tmp_path: Path) -> None:
    x, _ = digits()
    members = digit_members(5, classes=2) | {"1/small.png": encode(x[0][:16, :20])}
    path = write(tmp_path / "sizes.zip", zip_bytes(members))
    with pytest.raises(DatasetError) as error:
        load_dataset(f"images:{path}")
    message = str(error.value)
    assert "several sizes" in message and "32x32" in message and "20x16" in message
    assert "source_model" in message and "\n" not in message
    data = load_dataset(f"images:{path}", image_shape=(24, 24, 1), resize_method="area")
    assert data.input_shape == (24, 24, 1)
    # The loader's resize is fit_images's: the 16x20 image (1/small.png, class 1's first
    # file by name after img_*) resized by both ways gives the same pixels.
    expected = fit_images(x[0][:16, :20][np.newaxis, ..., np.newaxis], (24, 24, 1), "area")
    assert any(np.array_equal(image, expected[0]) for image in data.x_train[data.y_train == 1])


def test_image_shape_converts_channels(tmp_path: Path) -> None:
    grey = write(tmp_path / "grey.zip", held_out_zip(per_class=5, classes=2))
    rgb = load_dataset(f"images:{grey}", image_shape=(32, 32, 3))
    assert rgb.input_shape == (32, 32, 3)
    assert np.array_equal(rgb.x_train[..., 0], rgb.x_train[..., 2])
    colour = write(tmp_path / "colour.zip", held_out_zip(per_class=5, classes=2, colour=True))
    native = load_dataset(f"images:{colour}")
    luminance = load_dataset(f"images:{colour}", image_shape=(32, 32, 1))
    expected = np.asarray(Image.fromarray(native.x_train[0]).convert("L"))
    assert np.array_equal(luminance.x_train[0, ..., 0], expected)


def test_loads_are_cached_by_file_stamp_and_shape(tmp_path: Path) -> None:
    path = write(tmp_path / "d.zip", held_out_zip(per_class=5, classes=2))
    first = load_dataset(f"images:{path}")
    assert load_dataset(f"images:{path}") is first
    resized = load_dataset(f"images:{path}", image_shape=(16, 16, 1))
    assert resized is not first and resized.input_shape == (16, 16, 1)
    assert load_dataset(f"images:{path}", image_shape=(16, 16, 1), resize_method="nearest") \
        is not resized
    write(path, held_out_zip(per_class=10, classes=2))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert len(load_dataset(f"images:{path}").y_train) == 16


def test_built_in_tasks_and_npz_ignore_the_shape() -> None:
    assert load_dataset("digits", image_shape=(32, 32, 3)).input_shape == (8, 8, 1)


@pytest.mark.parametrize(("members", "reason"), [
    (digit_members(5, prefix="train/"), "a train/ folder but no test/ folder"),
    (digit_members(5, prefix="train/", classes=3) | digit_members(2, prefix="test/", classes=2),
     "the same class folders; 2 is in only one of them"),
    (digit_members(5, classes=1), "1 class folder (0); a task needs at least two"),
    (digit_members(4, classes=2), "a class needs at least 5 images"),
    (digit_members(5, classes=2) | {"1/deeper/x.png": b""}, "nested deeper than <class>/<image>"),
    ({"../0/x.png": b"", "1/y.png": b""}, "'..' or '.' step"),
    ({"/0/x.png": b"", "1/y.png": b""}, "absolute path"),
    ({"0\\x.png": b"", "1/y.png": b""}, "backslash"),
    ({"C:/0/x.png": b"", "1/y.png": b""}, "drive letter"),
])
def test_layouts_that_are_refused(tmp_path: Path, members: dict[str, bytes], reason: str) -> None:
    path = write(tmp_path / "bad.zip", zip_bytes(members))
    with pytest.raises(DatasetError, match=r"bad\.zip: .*" + re.escape(reason)):
        load_dataset(f"images:{path}")
    with pytest.raises(ValueError, match=re.escape(reason)):
        check_image_zip(path, FileLimits())


def test_a_missing_zip_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape("does not exist; check images:PATH.zip")):
        load_dataset(f"images:{tmp_path / 'nope.zip'}")


# --- fit_images: the one resizer ---------------------------------------------------------
@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_fit_images_is_pillows_resize(method: str) -> None:
    x, _ = digits(8)
    grey = x[:3, ..., np.newaxis]
    out = fit_images(grey, (20, 12, 1), method)
    direct = Image.fromarray(x[1]).resize((12, 20), resample=FILTERS[method])
    assert out.shape == (3, 20, 12, 1) and out.dtype == np.uint8
    assert np.array_equal(out[1, ..., 0], np.asarray(direct))
    # 1 -> 3 repeats the grey channel: Pillow's RGB conversion, then the same resize
    rgb = fit_images(grey, (20, 12, 3), method)
    assert np.array_equal(rgb[1], np.asarray(Image.fromarray(x[1]).convert("RGB")
                                             .resize((12, 20), resample=FILTERS[method])))
    # 3 -> 1 is Pillow's luminance ("L"), then the resize
    colour = np.stack([x[:3], x[:3] // 2, 255 - x[:3]], axis=-1)
    back = fit_images(colour, (20, 12, 1), method)
    assert np.array_equal(back[1, ..., 0], np.asarray(Image.fromarray(colour[1]).convert("L")
                                                      .resize((12, 20), FILTERS[method])))


def test_fit_images_returns_x_itself_when_it_fits() -> None:
    x = digits()[0][:4, ..., np.newaxis]
    assert fit_images(x, (32, 32, 1), "bilinear") is x
    with pytest.raises(ValueError, match="unknown resize method 'cubic'"):
        fit_images(x, (16, 16, 1), "cubic")
    with pytest.raises(ValueError, match="2 channels"):
        fit_images(x, (16, 16, 2), "bilinear")


# --- the service's checks, from the directory and the headers -----------------------------
def test_check_summarises_a_good_zip(tmp_path: Path) -> None:
    path = write(tmp_path / "d.zip", held_out_zip(per_class=12, formats=("PNG", "JPEG")))
    summary = check_image_zip(path, FileLimits())
    assert (summary.classes, summary.train, summary.test) == (10, 100, 20)
    assert summary.shape == (32, 32, 1) and summary.held_out
    assert image_zip_train_size(path) == 100
    assert check_image_zip(path, FileLimits(), (64, 64, 3)).shape == (64, 64, 3)


@pytest.mark.parametrize(("limits", "reason"), [
    (FileLimits(max_image_files=119), "more than 119 members (QUANTA_MAX_IMAGE_FILES)"),
    (FileLimits(max_image_pixels=1000), "32x32 = 1024 pixels, over the limit of 1000"),
    (FileLimits(max_dataset_bytes=100_000), "over the limit of 100000 (QUANTA_MAX_DATASET"),
    (FileLimits(max_image_side=31), "the limit is 31 a side (QUANTA_MAX_IMAGE_SIDE)"),
    (FileLimits(max_unpacked_bytes=10_000), "over the limit of 10000 (QUANTA_MAX_UPLOAD"),
])
def test_each_limit_is_named(tmp_path: Path, limits: FileLimits, reason: str) -> None:
    path = write(tmp_path / "d.zip", held_out_zip(per_class=12))
    with pytest.raises(ValueError) as error:
        check_image_zip(path, limits)
    assert reason in str(error.value)


def test_a_bomb_png_is_refused_from_its_header(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    def decoded(self: object) -> None:
        raise AssertionError(f"{self} was decoded: the check must read headers only")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)
    for side, reason in ((100_000, "declares more than"), (5000, "5000x5000 = 25000000")):
        members = digit_members(5, classes=2) | {"1/bomb.png": png_declaring(side, side)}
        path = write(tmp_path / "bomb.zip", zip_bytes(members))
        with pytest.raises(ValueError, match=reason) as error:
            check_image_zip(path, FileLimits())
        assert "QUANTA_MAX_IMAGE_PIXELS" in str(error.value)


def test_200k_members_are_counted_without_reading_the_directory(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The default cap (100,000) against a real 200,000-member zip: refused from the
    central directory's records, before zipfile would build 200,000 objects."""
    path = write(tmp_path / "many.zip", many_members_zip(200_000))
    assert zip_member_count(path, 300_000) == 200_000
    assert zip_member_count(path, 1000) == 1001  # stops once past the limit

    def no_zipfile(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile read the whole directory")

    monkeypatch.setattr(zipfile, "ZipFile", no_zipfile)
    with pytest.raises(ValueError, match="more than 100000 members"):
        check_image_zip(path, FileLimits())


def test_a_symlink_member_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "link.zip", symlink_zip())
    with pytest.raises(ValueError, match=re.escape("'1/img_link.png' is a symbolic link")):
        check_image_zip(path, FileLimits())


def test_the_worker_checks_again_naming_the_field(tmp_path: Path) -> None:
    good = write(tmp_path / "good.zip", held_out_zip(per_class=5, classes=2))
    bad = write(tmp_path / "bad.zip", symlink_zip())
    weights = tmp_path / "w.weights.h5"
    check_spec_files(SourceSpec(source_task=f"images:{good}"), FileLimits())
    spec = TransferSpec(source_task=f"images:{good}", target_task=f"images:{bad}",
                        source_weights=str(weights), layer_to_transfer=0)
    with pytest.raises(Invalid) as error:
        check_spec_files(spec, FileLimits())
    assert error.value.loc == ("spec", "target_task")
    assert "target_task (bad.zip) is refused" in str(error.value)


def test_quotas_count_the_training_images(tmp_path: Path) -> None:
    path = write(tmp_path / "d.zip", held_out_zip(per_class=12))
    spec = SourceSpec(source_task=f"images:{path}", nb_of_epochs=3)
    assert planned_work(spec) == (300, "nb_of_epochs", "3 epochs × 100 samples")


# --- the command lines ------------------------------------------------------------------------
def test_spec_and_usage_errors(tmp_path: Path) -> None:
    assert SourceSpec(source_task="images:a/b/My.Set.ZIP").source_task == "images:a/b/My.Set.ZIP"
    assert task_label("images:a/b/my_set.zip") == "my_set"
    with pytest.raises(ValueError, match=re.escape("must be a '.zip' file")):
        SourceSpec(source_task="images:data.tar")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "quanta.train_source", "-s",
         "images:data.tar"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert errors[0].startswith("usage: quanta-train-source")
    assert any("'.zip' file (images:PATH.zip)" in line for line in errors), errors
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow" not in imported and "keras" not in imported


def test_source_training_and_transfer_on_an_image_zip(tmp_path: Path) -> None:
    """The real command lines on a real zip: a tiny source trained on it, then a transfer
    to another zip (its split folders), with the zips' stems as the task names."""
    pytest.importorskip("keras")
    from quanta import cli, train_source

    source = write(tmp_path / "held.zip", held_out_zip(per_class=10, formats=("PNG", "JPEG")))
    target = write(tmp_path / "split.zip", split_zip(train=4, test=2, formats=("BMP", "PNG")))
    common = ["--width_multiplier", "0.0625", "--seed", "1"]
    out = tmp_path / "expe"
    assert train_source.main(["-o", str(out), "-s", f"images:{source}", "--nb_of_epochs", "1",
                              *common]) == 0
    weights = out / "held_training" / "source.weights.h5"
    assert weights.is_file()
    assert cli.main(["-o", str(out), "-s", f"images:{source}", "-sw", str(weights), "-t",
                     f"images:{target}", "-l", "0", "--nb_of_target_epochs", "1",
                     *common]) == 0
    (line,) = (out / "held_to_split" / "quantas_r_0_l_0.jsonl").read_text().splitlines()
    assert len(json.loads(line)["0"]["quantas"]["source"]) == 2  # start and one epoch
