"""Serving a job's files over HTTP: content types and zip archives streamed piece by piece.

Which files a job has, and whether a requested path is safe, is the artifact index
(`quanta_jobs.artifacts`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from quanta_jobs.artifacts import CHUNK

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
