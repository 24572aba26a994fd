"""Receive a multipart upload straight to disk, hashing and counting as it arrives.

Starlette's form parser spools a whole file to a temporary file before the route
runs, so a size limit could only be enforced after the client has sent everything.
This parser writes the `file` part into the uploads folder chunk by chunk and stops
with 413 as soon as the limit is passed.

The parser itself is bounded too: a part's headers (`MAX_PART_HEADER_BYTES`), the
number of parts (`MAX_PARTS`) and everything that is not the file's content (headers
and text fields, `MULTIPART_OVERHEAD`) each have a ceiling, past which the upload is a
413 or 422. Parsing and writing run in a worker thread, a megabyte at a time
(`FEED_BYTES`), so a large upload never occupies the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from quanta_jobs.errors import Invalid, ServiceError, TooLarge
from quanta_jobs.upload_holds import partial_name
from quanta_spec.files import partial_path

#: Bytes a text form field may hold (the `kind` field is a word).
MAX_FIELD_BYTES = 1024
#: Headers, boundaries and text fields on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
#: How many bytes of the file's start are kept to recognise its kind.
HEAD_BYTES = 4096
#: Bytes of one part's headers (a Content-Disposition with a long file name fits).
MAX_PART_HEADER_BYTES = 8 * 1024
#: Header lines of one part (Content-Disposition, Content-Type, a few extras).
MAX_PART_HEADERS = 8
#: Parts of one upload: the file, `kind`, and a little room for clients' extras.
MAX_PARTS = 8
#: Body bytes handed to the parser in one go (in a worker thread).
FEED_BYTES = 1024 * 1024


@dataclass
class ReceivedFile:
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""
    head: bytes = b""


@dataclass
class ReceivedForm:
    file: ReceivedFile | None = None
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """Callbacks for python-multipart; data is queued and written outside the parser."""

    def __init__(self, dest: Path, max_bytes: int, file_field: str) -> None:
        self.dest, self.max_bytes, self.file_field = dest, max_bytes, file_field
        self.form = ReceivedForm()
        self.pending: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._text = bytearray()
        self._digest = hashlib.sha256()
        self.handle: IO[bytes] | None = None
        self._parts = 0
        self._part_header_bytes = 0
        self._overhead = 0  # headers and text fields of every part so far

    def _count_overhead(self, size: int) -> None:
        self._part_header_bytes += size
        self._overhead += size
        if self._part_header_bytes > MAX_PART_HEADER_BYTES:
            raise TooLarge(f"a part's headers are larger than {MAX_PART_HEADER_BYTES} bytes",
                           loc=("body",))
        if self._overhead > MULTIPART_OVERHEAD:
            raise TooLarge(f"the form's headers and text fields are larger than "
                           f"{MULTIPART_OVERHEAD} bytes", loc=("body",))

    # python-multipart callbacks
    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise Invalid(f"the form has more than {MAX_PARTS} parts; send the file and "
                          "optionally 'kind'", loc=("body",))
        self._disposition, self._name, self._is_file = b"", "", False
        self._text = bytearray()
        self._part_header_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_overhead(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_overhead(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if self._name != self.file_field:
            raise Invalid(f"unexpected file field '{self._name}'; send the file as "
                          f"'{self.file_field}'", loc=("body", self._name))
        if self.form.file is not None:
            raise Invalid("send one file per upload", loc=("body", self.file_field))
        self._is_file = True
        filename = options[b"filename"].decode("utf-8", "replace")
        partial = partial_path(self.dest, partial_name())  # names this process (orphans)
        self.form.file = ReceivedFile(filename=filename, path=partial)
        self.handle = open(partial, "wb")  # noqa: SIM115 - closed in receive_upload

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._text += chunk
            self._overhead += len(chunk)
            if len(self._text) > MAX_FIELD_BYTES or self._overhead > MULTIPART_OVERHEAD:
                raise Invalid(f"form field '{self._name}' is too long", loc=("body", self._name))
            return
        received = self.form.file
        assert received is not None
        received.size += len(chunk)
        if received.size > self.max_bytes:
            raise TooLarge(f"the file is larger than the limit of {self.max_bytes} bytes",
                           loc=("body", self.file_field))
        if len(received.head) < HEAD_BYTES:
            received.head += chunk[: HEAD_BYTES - len(received.head)]
        self._digest.update(chunk)
        self.pending.append(chunk)

    def on_part_end(self) -> None:
        if self._is_file:
            assert self.form.file is not None
            self.form.file.sha256 = self._digest.hexdigest()
        elif self._name:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")

    def callbacks(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field",
            "on_header_value", "on_header_end", "on_headers_finished",
        )}


def _feed(parser: MultipartParser, receiver: _Receiver, data: bytes) -> None:
    """Parse `data` and write the file bytes it held (in a worker thread)."""
    parser.write(data)
    if receiver.pending and receiver.handle is not None:
        chunks, receiver.pending = receiver.pending, []
        for chunk in chunks:
            receiver.handle.write(chunk)


async def receive_upload(
    request: Request, dest: Path, max_bytes: int,
    arriving: Callable[[int], Awaitable[None]] | None = None, file_field: str = "file",
) -> ReceivedForm:
    """Parse the multipart body; the file lands in `dest/.upload.*.partial` (the caller renames it).

    `arriving(size)` is awaited with the file's size so far after each megabyte written
    (the storage quota counts them as they come; it may raise to stop the upload).
    Raises `TooLarge` past `max_bytes`, `Invalid` for a malformed body; on error the
    partial file is removed.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Invalid("send the file as multipart/form-data", loc=("body",))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise TooLarge(f"the request ({declared} bytes) is larger than the limit of "
                       f"{max_bytes} bytes", loc=("body", file_field))
    receiver = _Receiver(dest, max_bytes, file_field)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks(),  # type: ignore[arg-type]
                             max_header_count=MAX_PART_HEADERS,
                             max_header_size=MAX_PART_HEADER_BYTES)
    try:
        buffered: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            buffered.append(chunk)
            size += len(chunk)
            if size >= FEED_BYTES:
                data, buffered, size = b"".join(buffered), [], 0
                await anyio.to_thread.run_sync(_feed, parser, receiver, data)
                if arriving is not None and receiver.form.file is not None:
                    await arriving(receiver.form.file.size)
        await anyio.to_thread.run_sync(_feed, parser, receiver, b"".join(buffered))
        if arriving is not None and receiver.form.file is not None:
            await arriving(receiver.form.file.size)
        parser.finalize()
    except BaseException as exc:
        if receiver.handle is not None:
            receiver.handle.close()
        if receiver.form.file is not None:
            receiver.form.file.path.unlink(missing_ok=True)
        if isinstance(exc, ServiceError):
            raise
        if isinstance(exc, FormParserError):
            if "Maximum header" in str(exc):  # python-multipart's own header bounds
                raise TooLarge(f"a part's headers are larger than {MAX_PART_HEADER_BYTES} "
                               f"bytes or more than {MAX_PART_HEADERS} lines",
                               loc=("body",)) from exc
            raise Invalid("malformed multipart body", loc=("body",)) from exc
        raise
    if receiver.handle is not None:
        receiver.handle.close()
    return receiver.form
