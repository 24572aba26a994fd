"""Request bodies before authentication, and the multipart parser's bounds (issue: an
unauthenticated client streamed hundreds of MiB into the API's memory).

Against a real `quanta-serve` (uvicorn, HTTP/1.1 framing, its own process's RSS):
each attack streams 200 MiB, chunked or with a Content-Length, and must be answered
(401 or 413) long before the body ends, the server's memory barely moving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.hostile import MiB, Server, stream_body

TOTAL = 200 * MiB
#: Generous: kernel socket buffers and the interpreter's own noise, not the body.
MAX_GROWTH = 50 * MiB
#: Body bytes the server may let in before it answers (socket buffers, one read).
MAX_ACCEPTED = 32 * MiB
MULTIPART = {"Content-Type": "multipart/form-data; boundary=XyZ"}
PREAMBLE = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="w.weights.h5"'
            b'\r\nContent-Type: application/octet-stream\r\n\r\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("bodies")
    with Server(tmp, max_upload_bytes=4 * MiB) as running:
        yield running


def _refused(attack: Any, status: int, server: Server) -> None:
    assert attack.status == status, (attack, server.log()[-3000:])
    assert attack.sent < MAX_ACCEPTED, attack
    assert attack.peak_rss_growth < MAX_GROWTH, attack


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/uploads"])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_no_token_is_refused_before_the_body(server: Server, path: str, chunked: bool) -> None:
    attack = stream_body(server, path, MULTIPART, TOTAL, chunked=chunked, first=PREAMBLE)
    _refused(attack, 401, server)
    assert b"www-authenticate: bearer" in attack.response.lower()


def test_a_wrong_token_is_refused_before_the_body(server: Server) -> None:
    attack = stream_body(server, "/v1/jobs", {"Authorization": "Bearer not-a-known-token",
                                              "Content-Type": "application/json"}, TOTAL)
    _refused(attack, 401, server)
    assert b"www-authenticate: bearer" in attack.response.lower()  # refused as a token


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=XyZ",
                                          "application/json", "text/plain",
                                          "application/octet-stream"])
def test_a_json_route_counts_every_body_whatever_its_type(server: Server,
                                                          content_type: str) -> None:
    attack = stream_body(server, "/v1/jobs", {**server.headers(),
                                              "Content-Type": content_type}, TOTAL,
                         first=PREAMBLE)
    _refused(attack, 413, server)
    assert b"QUANTA_MAX_JSON_BYTES" in attack.response


def test_an_upload_stops_at_its_limit_while_streaming(server: Server, tmp_path: Path) -> None:
    attack = stream_body(server, "/v1/uploads", {**server.headers(), **MULTIPART}, TOTAL,
                         first=PREAMBLE)
    _refused(attack, 413, server)
    uploads = Path(server.env["QUANTA_ARTIFACTS_DIR"]).parent / "uploads"
    assert not [p for p in uploads.rglob("*") if p.is_file()], "a partial upload was left"


def test_declared_length_over_the_limit_is_refused_at_once(server: Server) -> None:
    attack = stream_body(server, "/v1/uploads", {**server.headers(), **MULTIPART}, TOTAL,
                         chunked=False, first=PREAMBLE)
    _refused(attack, 413, server)
    assert b"QUANTA_MAX_UPLOAD_BYTES" in attack.response  # for its length, not a token


def test_a_valid_request_still_works(server: Server) -> None:
    response = httpx.post(f"{server.base}/v1/jobs", headers=server.headers(), json={
        "kind": "source", "spec": {"source_task": "digits", "show_only_build": True}})
    assert response.status_code == 201, response.text
    response = httpx.post(f"{server.base}/v1/uploads", headers=server.headers(),
                          files={"file": ("x.npz", b"PK" + b"\0" * 100)})
    assert response.status_code == 422  # reached the route: not a readable npz


def _multipart(parts: list[tuple[str, bytes]], boundary: bytes = b"B0undary") -> bytes:
    body = b""
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n" + headers.encode() + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize(("case", "expected", "says"), [
    ("many_parts", 422, "more than 8 parts"),
    ("long_header", 413, "headers are larger than"),
    ("overhead", 413, "headers and text fields are larger than"),
])
def test_the_multipart_parser_is_bounded(server: Server, case: str, expected: int,
                                         says: str) -> None:
    if case == "many_parts":
        parts = [(f'Content-Disposition: form-data; name="f{i}"', b"v") for i in range(50)]
    elif case == "long_header":
        parts = [('Content-Disposition: form-data; name="kind"\r\nX-Pad: ' + "a" * 20000,
                  b"weights")]
    else:  # every part within its own bounds, the form as a whole over them
        parts = [(f'Content-Disposition: form-data; name="f{i}"\r\nX-Pad: {"c" * 7600}',
                  b"v" * 1000) for i in range(8)]
    response = httpx.post(f"{server.base}/v1/uploads", content=_multipart(parts), headers={
        **server.headers(), "Content-Type": "multipart/form-data; boundary=B0undary"})
    assert response.status_code == expected, response.text
    assert says in response.text
