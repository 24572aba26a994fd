"""Serving a job's files over HTTP from the store: byte ranges, content types, and zip
archives streamed piece by piece.

Which files a job has is the artifact index (the `artifacts` table); where each is
kept is the store's business (`quanta_jobs.store`): the API never opens a path itself,
so the same code serves a local folder and a bucket, and a download is streamed from the
store in chunks (with a bucket, a ranged download asks the bucket for that range only).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import PurePosixPath

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from quanta_jobs.store import CHUNK, ArtifactStore

RANGE = re.compile(r"bytes=(\d*)-(\d*)")
#: Digits beyond which a Range bound is larger than any file (and than `int` parses at once).
MAX_RANGE_DIGITS = 18

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


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, length) of a single `Range: bytes=...` header; None to send the whole
    file (no header, another unit, several ranges, or a malformed one: RFC 9110 lets a
    server ignore those); "unsatisfiable" for a range that starts past the end."""
    if not header:
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    # A bound of more digits than any file's size has: past every end.
    first, last = (text if len(text) <= MAX_RANGE_DIGITS else "9" * MAX_RANGE_DIGITS
                   for text in (first, last))
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            return "unsatisfiable"
        return max(0, size - suffix), min(suffix, size)
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end - start + 1


def stream_object(store: ArtifactStore, key: str, request: Request, *, media_type: str,
                  headers: dict[str, str], filename: str | None = None) -> Response:
    """One stored file as the response: 200 whole, 206 for a range (`Range`, honoured
    unless `If-Range` names another version), 416 past the end; HEAD gets the headers
    alone. Nothing is read before the client starts reading."""
    info = store.stat(key)
    if info is None:
        raise FileNotFoundError(key)
    size = info.size
    headers = {**headers, "Accept-Ranges": "bytes"}
    if filename is not None:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    wanted = byte_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range is not None and if_range.strip() != headers.get("ETag"):
        wanted = None  # the client holds another version: it gets the whole new one
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    status, start, length = 200, 0, size
    if isinstance(wanted, tuple):
        status, (start, length) = 206, wanted
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD" or length == 0:
        return Response(status_code=status, media_type=media_type, headers=headers)
    return StreamingResponse(store.iter_bytes(key, start, length), status_code=status,
                             media_type=media_type, headers=headers)


def zip_stream(store: ArtifactStore, files: list[tuple[str, str]],
               when: datetime | None = None) -> Iterator[bytes]:
    """Yield a zip archive of `files` (name in archive, store key) piece by piece, never
    whole; each member is dated `when` (the job's end), so an archive is the same bytes
    each time it is asked for."""
    stamp = (when or datetime(1980, 1, 1)).timetuple()[:6]
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", allowZip64=True) as archive:  # type: ignore[arg-type]
        for name, key in files:
            method = (zipfile.ZIP_STORED if name.lower().endswith(STORED_SUFFIXES)
                      else zipfile.ZIP_DEFLATED)
            info = zipfile.ZipInfo(name, date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with store.get(key) as source, archive.open(info, "w", force_zip64=True) as dest:
                while chunk := source.read(CHUNK):
                    dest.write(chunk)
                    if data := sink.take():
                        yield data
            if data := sink.take():
                yield data
    if data := sink.take():
        yield data
