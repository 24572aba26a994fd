"""Recognise and check an uploaded file's kind from its content, never from its name alone.

This runs in the API process, which must not import TensorFlow or `quanta`: the checks
themselves are `quanta_jobs.file_checks` (h5py, zipfile and NumPy headers), which the
worker runs again before loading a file; `quanta.datasets` then checks the values.

A zip is a `model` when it holds `config.json`, a `dataset` (`.npz`) when it holds
`.npy` members, and `images` (class folders of images) when one of its members starts
as a PNG, JPEG, BMP or GIF file does; a `.zip` that is none of these is checked as
`images`, so that its refusal says what is wrong with it.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path

from quanta_jobs import file_checks, source_network
from quanta_jobs.file_checks import FileLimits
from quanta_spec.file_names import SOURCE_FILE_NAMES
from quanta_spec.images import is_clutter

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: HDF5 allows a user block before the superblock; it then starts at one of these offsets.
HDF5_OFFSETS = (0, 512, 1024, 2048)
KINDS = ("weights", "model", "dataset", "images")
SUFFIX_KIND = {".h5": "weights", ".hdf5": "weights", ".keras": "model", ".npz": "dataset",
               ".zip": "images"}
#: The first bytes of the image formats an image zip may hold (`IMAGE_FORMATS`).
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")
#: Members whose first bytes the sniffing reads, at most: enough to pass a zip's clutter.
SNIFFED_MEMBERS = 16


def is_hdf5(head: bytes) -> bool:
    return any(head[o: o + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE for o in HDF5_OFFSETS)


def _zip_kind(path: Path, max_members: int) -> str | None:
    """What a zip's members say it is; None when it cannot tell (or it has more members
    than any upload may: the check of its kind then says so)."""
    try:
        if file_checks.zip_member_count(path, max_members) > max_members:
            return None
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = {info.filename for info in infos}
            if "config.json" in names:
                return "model"
            if any(n.endswith(".npy") for n in names):
                return "dataset"
            candidates = [i for i in infos if not i.is_dir() and i.file_size
                          and not is_clutter(i.filename.split("/"))]
            for info in candidates[:SNIFFED_MEMBERS]:
                with archive.open(info) as member:
                    if member.read(8).startswith(IMAGE_SIGNATURES):
                        return "images"
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, NotImplementedError,
            RuntimeError, zlib.error):
        return None
    return None


def sniff_kind(path: Path, head: bytes, filename: str,
               limits: FileLimits | None = None) -> str | None:
    """The kind the content says, else the kind the file name says, else None."""
    if is_hdf5(head):
        return "weights"
    if head.startswith(b"PK"):
        kind = _zip_kind(path, (limits or FileLimits()).max_image_files)
        if kind is not None:
            return kind
    return SUFFIX_KIND.get(Path(filename.lower()).suffix)


def check_weights(path: Path, head: bytes) -> None:
    if not is_hdf5(head):
        raise ValueError("not an HDF5 file (no HDF5 signature); upload a .weights.h5 file "
                         "saved with model.save_weights")
    file_checks.check_hdf5(path)
    # Only once the file is known safe to open: its layers must be one of the networks'.
    source_network.check_upload(path)


def check_model(path: Path, limits: FileLimits) -> None:
    """A saved model: one of this project's (a source or target, to continue training) or
    a user's own network (a `source_model`); each field checks its own kind again when a
    job names the upload."""
    try:
        file_checks.check_keras(path, limits)
    except ValueError as quanta_model:
        if "QUANTA_MAX_MODEL_PARAMS" in str(quanta_model):
            raise  # too big for any use
        file_checks.check_network(path, limits)


def check(path: Path, head: bytes, kind: str, limits: FileLimits | None = None) -> None:
    """Raise ValueError saying what is wrong if the file is not a usable `kind`
    (`quanta_jobs.file_checks`, under `limits`: the service's settings)."""
    limits = limits or FileLimits()
    if kind == "weights":
        check_weights(path, head)
    elif kind == "model":
        check_model(path, limits)
    elif kind == "images":
        file_checks.check_image_zip(path, limits)
    else:
        file_checks.check_npz(path, limits)


def stored_name(kind: str, filename: str) -> str:
    """The name an upload is stored under: what the library expects for its kind.

    Keras loads weights only from `*.weights.h5`; a dataset (an `.npz`, or a zip of
    images) keeps its (sanitised) stem, which becomes the task's name in output folder
    names.
    """
    if kind == "weights":
        return SOURCE_FILE_NAMES["weights"]
    if kind == "model":
        return "model.keras"
    suffix = ".zip" if kind == "images" else ".npz"
    stem = Path(filename.replace("\\", "/")).name
    stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else Path(stem).stem
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "dataset"
    return f"{stem[:100]}{suffix}"
