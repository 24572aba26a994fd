"""A real S3-protocol HTTP server for the tests: moto's standalone server, its own process.

Never moto's in-process mock: the store talks HTTP to a server that could be MinIO, so
the tests cover the requests, ranges, multipart parts and metadata that go over the wire.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import port_open
from tests.support.waiting import wait_until

#: Credentials moto accepts; boto3 reads them from the environment like real ones.
#: The bucket the `s3_endpoint` fixture creates (tests keep to prefixes of their own).
BUCKET = "quanta-store-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "quanta-test", "AWS_SECRET_ACCESS_KEY": "quanta-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


def moto_missing() -> str | None:
    """Why moto's server cannot run here, or None."""
    try:
        import flask  # noqa: F401  (the server's extra)
        import moto.server  # noqa: F401
    except ImportError as exc:
        return f"moto[server] is not installed ({exc}); pip install 'moto[server]'"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 30.0,
              process: subprocess.Popen[bytes] | None = None) -> None:
    """Until something listens on host:port; fails at once if `process` (the server) exits
    first, else after `timeout` saying what did not happen."""

    def listening() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on {host}:{port} exited ({process.returncode})")
        return port_open(host, port)

    wait_until(listening, timeout, f"a server listening on {host}:{port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def moto_server(host: str = "127.0.0.1", port: int | None = None, *,
                wrap: Sequence[str] = (), log: Path | None = None) -> Iterator[str]:
    """A moto server on host:port (a free port if None) for the block; yields its URL.
    `wrap` prefixes the command (e.g. `ip netns exec NAME`) to start it elsewhere."""
    port = port or free_port(host if not wrap else "127.0.0.1")
    command = [*wrap, sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, **S3_ENV})
    try:
        wait_port(host, port, process=process)
        yield f"http://{host}:{port}"
    finally:
        stop(process)
        if log is not None:
            out.close()  # type: ignore[union-attr]


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.session.Session(
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
