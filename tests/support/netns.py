"""Several hosts on one machine for the tests: network namespaces on a private subnet.

`Hosts` makes one network namespace per host, joined to the root namespace by veth pairs
on a bridge of a private /24 (10.77.X.0/24, X chosen free). The root namespace is the
*server host* (`server_ip`, the bridge's address): the API, the S3 server and forwarders
to PostgreSQL and Redis (which listen on 127.0.0.1, out of the hosts' reach) bind there.

Each host also gets a folder of its own and sees only that one: its commands run in the
mount namespace `ip netns exec` creates, where the folder holding every host's folder
(and the server's) is covered by an empty tmpfs and only the host's own folder is put
back, at the same path. The project's code and virtual environment stay visible, like
software installed on each host; what a worker could reach on the API's disk is not.

Everything is named after a run id, and `close` (also on an error, or at exit) ends the
processes it started, deletes the namespaces, veths and the bridge.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.host_guard import session_tag
from tests.support.s3server import wait_port

#: A tiny TCP relay for when socat is missing: python -c FORWARDER LISTEN_HOST PORT TARGET_HOST PORT
FORWARDER = r"""
import asyncio, sys
lh, lp, th, tp = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def handle(r, w):
    try:
        tr, tw = await asyncio.open_connection(th, tp)
    except OSError:
        w.close()
        return
    await asyncio.gather(pipe(r, tw), pipe(tr, w))
async def main():
    server = await asyncio.start_server(handle, lh, lp, reuse_address=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"qprobe{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    if shutil.which("mount") is None:
        return "the `mount` command is missing (per-host folders need it)"
    return None


def _free_subnet() -> int:
    """A third octet X such that no interface has an address in 10.77.X.0/24."""
    used = _ip("-4", "-o", "addr").stdout
    for third in random.sample(range(1, 255), 254):  # two test processes rarely pick alike
        if f"10.77.{third}." not in used:
            return third
    raise RuntimeError("no free 10.77.X.0/24 subnet")


def _stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """End a process this harness started, and its process group (never anything else)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


@dataclass
class Host:
    """One host: a network namespace, an address, a folder only it sees."""

    name: str
    netns: str
    ip: str
    folder: Path
    hide_root: Path  # the folder of all hosts' folders (covered in this host's view)
    stash: Path  # where the own folder is bind-mounted while the tmpfs goes over hide_root
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, command: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """The command line that runs `command` on this host (namespace, own folder)."""
        own = shlex.quote(str(self.folder))
        script = "; ".join([
            "set -e",
            f"mkdir -p {shlex.quote(str(self.stash))}",
            f"mount --rbind {own} {shlex.quote(str(self.stash))}",
            f"mount -t tmpfs -o mode=755 quanta-host {shlex.quote(str(self.hide_root))}",
            f"mkdir -p {own}",
            f"mount --rbind {shlex.quote(str(self.stash))} {own}",
            f"cd {shlex.quote(str(cwd or self.folder))}",
            'exec "$@"',
        ])
        return ["ip", "netns", "exec", self.netns, "sh", "-c", script, "quanta-host",
                *command]

    def run(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike[str] | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `command` on the host to its end (its own env: the given one, else ours)."""
        return subprocess.run(self.argv(command, cwd), env=dict(env or os.environ),
                              capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `command` on the host in its own process group (ended by `Hosts.close`,
        or by `stop`)."""
        process = subprocess.Popen(self.argv(command, cwd), env=dict(env or os.environ),
                                   start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def python(self, code: str, *, env: Mapping[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run Python code on the host with this interpreter."""
        return self.run([sys.executable, "-c", code], env=env, timeout=timeout)


class Hosts:
    """`names` hosts plus the server host (the root namespace); a context manager.

    hosts = Hosts(tmp_path, ["gpu-a", "gpu-b"]); hosts["gpu-a"].run([...]);
    hosts.forward(5432) makes 127.0.0.1:5432 reachable at server_ip:5432."""

    def __init__(self, base: str | os.PathLike[str], names: Sequence[str] = ("a", "b")) -> None:
        # the run's tag first: the suite's host check removes only its own run's leftovers
        self.run_id = session_tag() + uuid.uuid4().hex[:3]
        self.base = Path(base).resolve() / f"hosts-{self.run_id}"
        self.server_folder = self.base / "server"
        self.bridge = f"qb{self.run_id}"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self._links: list[str] = []
        self._netns: list[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._make(names)
        except BaseException:
            self.close()
            raise

    def _make(self, names: Sequence[str]) -> None:
        third = _free_subnet()
        self.subnet = f"10.77.{third}.0/24"
        self.server_ip = f"10.77.{third}.1"
        self.server_folder.mkdir(parents=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.server_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        stash_root = Path("/run") / f"quanta-hosts-{self.run_id}"
        for index, name in enumerate(names):
            netns = f"quanta-{self.run_id}-{name}"
            outer, inner = f"qv{self.run_id}{index}", f"qi{self.run_id}{index}"
            ip = f"10.77.{third}.{10 + index}"
            _ip("netns", "add", netns)
            self._netns.append(netns)
            folder = self.base / name
            folder.mkdir()
            self.hosts[name] = Host(name, netns, ip, folder, self.base, stash_root / name)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._links.append(outer)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("link", "set", inner, "netns", netns)
            _ip("-n", netns, "link", "set", inner, "name", "eth0")
            _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server host (root namespace) ------------------------------------------

    def serve(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process on the server host (ended by `close`)."""
        process = subprocess.Popen(list(command), env=dict(env or os.environ),
                                   cwd=cwd or self.server_folder, start_new_session=True,
                                   **kwargs)
        self.processes.append(process)
        return process

    def forward(self, port: int, target_host: str = "127.0.0.1",
                target_port: int | None = None, listen_port: int | None = None) -> int:
        """Relay server_ip:listen_port to target_host:target_port (socat, else a Python
        relay); returns the port the hosts connect to."""
        listen_port = listen_port or port
        target_port = target_port or port
        if shutil.which("socat"):
            command = ["socat", f"TCP-LISTEN:{listen_port},bind={self.server_ip},reuseaddr,fork",
                       f"TCP:{target_host}:{target_port}"]
        else:
            command = [sys.executable, "-c", FORWARDER, self.server_ip, str(listen_port),
                       target_host, str(target_port)]
        process = self.serve(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.server_ip, listen_port, process=process)
        return listen_port

    def free_port(self) -> int:
        with socket.socket() as sock:
            sock.bind((self.server_ip, 0))
            return int(sock.getsockname()[1])

    # -- cleanup --------------------------------------------------------------------

    def names(self) -> list[str]:
        """The namespaces and links of this run that still exist (empty after close)."""
        left = [n for n in _ip("netns", "list", check=False).stdout.split()
                if n.startswith(f"quanta-{self.run_id}-")]
        links = _ip("-o", "link", check=False).stdout
        left += [name for name in [self.bridge, *self._links] if f" {name}:" in links
                 or f" {name}@" in links]
        return sorted(set(left))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            for process in host.processes:
                _stop(process)
        for process in self.processes:
            _stop(process)
        for netns in self._netns:
            # Whatever still runs in a namespace of ours was started through it.
            for pid in _ip("netns", "pids", netns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", netns, check=False)
        for link in reversed(self._links):
            _ip("link", "del", link, check=False)
        shutil.rmtree(Path("/run") / f"quanta-hosts-{self.run_id}", ignore_errors=True)
        atexit.unregister(self.close)
