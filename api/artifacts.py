"""Files of a job's output folder: hashing, safe lookup, content types, zip streaming.

A download path comes from the client, so it is only served if it is a recorded
artifact of the job AND resolves inside the job's folder without a symlink on the
way; anything else is a 404 (we do not say whether the file exists).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from api.crud import ArtifactInfo

CHUNK = 1024 * 1024
CONTENT_TYPES = {
    ".jsonl": "application/jsonl",
    ".json": "application/json",
    ".keras": "application/zip",
    ".h5": "application/x-hdf5",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".npz": "application/octet-stream",
}
#: Already-compressed formats are stored as they are in the zip archive.
STORED_SUFFIXES = (".keras", ".png", ".npz", ".zip")


def content_type(path: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(path).suffix.lower(), "application/octet-stream")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_safe_relative(path: str) -> bool:
    """A relative POSIX path with no empty, `.` or `..` part and no backslash or NUL."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts) and ":" not in parts[0]


def safe_file(root: Path, relative: str) -> Path | None:
    """`root/relative` if it is a regular file inside `root` reached without any symlink."""
    if not is_safe_relative(relative):
        return None
    candidate = root
    for part in relative.split("/"):
        candidate = candidate / part
        if candidate.is_symlink():
            return None
    try:
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(Path(os.path.realpath(root))) or not real.is_file():
            return None
    except OSError:
        return None
    return candidate


def scan(root: Path) -> list[ArtifactInfo]:
    """Every regular file under `root` (symlinks skipped), with its size and digest."""
    found: list[ArtifactInfo] = []
    if not root.is_dir():
        return found
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not Path(folder, d).is_symlink())
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            found.append(ArtifactInfo(relative, path.stat().st_size, sha256_of(path)))
    return found


class _Sink:
    """A write-only, non-seekable file for ZipFile that hands out what was written."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def zip_stream(files: list[tuple[str, Path]]) -> Iterator[bytes]:
    """Yield a zip archive of `files` (name in archive, path) piece by piece, never whole."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", allowZip64=True) as archive:  # type: ignore[arg-type]
        for name, path in files:
            method = (zipfile.ZIP_STORED if name.lower().endswith(STORED_SUFFIXES)
                      else zipfile.ZIP_DEFLATED)
            info = zipfile.ZipInfo.from_file(path, arcname=name)
            info.compress_type = method
            with open(path, "rb") as source, archive.open(info, "w", force_zip64=True) as dest:
                while chunk := source.read(CHUNK):
                    dest.write(chunk)
                    if data := sink.take():
                        yield data
            if data := sink.take():
                yield data
    if data := sink.take():
        yield data
