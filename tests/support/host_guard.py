"""The host as the suite found it: what the suite may leave behind, looked for at the end.

The suite starts servers, workers, browsers, network namespaces, veth pairs, bridges and
mounts. A test that fails half-way must still leave none of them, and none of the host's
own services broken: a /dev/null replaced by a plain file once made the host's RabbitMQ
(which the project does not use) spawn an `epmd-starter` every minute that never
ended, until the load reached 35. `snapshot` is taken before the first test and after the
last; `leftovers` names what appeared in between, and `clean` removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Command lines of what the suite starts (and of what a broken host piles up).
SUITE_PROCESSES = re.compile(
    r"-m (api\.serve|worker\.main|celery)\b|moto_server|mlflow\b.*server|flower\b"
    r"|redis-server \S*:(?!6379\b)\d+|/usr/bin/chromium|chrome_crashpad|epmd-starter"
    r"|quanta-host")
#: Names of the namespaces, links and folders `tests.support.netns` makes.
SUITE_NAMES = re.compile(r"^(quanta-|qb|qv|qi|qprobe)")


@dataclass
class HostState:
    processes: dict[int, str] = field(default_factory=dict)
    netns: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    mounts: set[str] = field(default_factory=set)
    dev_null_is_device: bool = True


def _ip(*args: str) -> str:
    try:
        return subprocess.run(["ip", *args], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _processes() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
            if SUITE_PROCESSES.search(cmdline):
                found[int(entry.name)] = cmdline[:200]
    return found


def snapshot() -> HostState:
    links = {line.split(":")[1].strip().split("@")[0]
             for line in _ip("-o", "link").splitlines() if line.count(":") >= 2}
    mounts = {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if "quanta-hosts-" in line}
    return HostState(
        processes=_processes(),
        netns={line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()},
        links={name for name in links if SUITE_NAMES.match(name)},
        mounts=mounts,
        dev_null_is_device=stat.S_ISCHR(os.stat(os.devnull).st_mode))


def leftovers(before: HostState, settle_s: float = 15.0) -> HostState:
    """What is on the host now that was not before, once processes that are ending have had
    `settle_s` seconds to end."""
    deadline = time.monotonic() + settle_s
    while True:
        now = snapshot()
        extra = HostState(
            processes={pid: cmd for pid, cmd in now.processes.items()
                       if pid not in before.processes},
            netns=now.netns - before.netns, links=now.links - before.links,
            mounts=now.mounts - before.mounts,
            dev_null_is_device=now.dev_null_is_device or not before.dev_null_is_device)
        if not extra.processes or time.monotonic() >= deadline:
            return extra
        time.sleep(0.5)


def describe(extra: HostState) -> list[str]:
    lines = [f"process {pid}: {cmd}" for pid, cmd in sorted(extra.processes.items())]
    lines += [f"network namespace {name}" for name in sorted(extra.netns)]
    lines += [f"network link {name}" for name in sorted(extra.links)]
    lines += [f"mount {path}" for path in sorted(extra.mounts)]
    if not extra.dev_null_is_device:
        lines.append(f"{os.devnull} is no longer a device")
    return lines


def clean(extra: HostState) -> None:
    """Remove what the suite left (processes killed, namespaces, links, mounts removed)."""
    for pid in extra.processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for path in sorted(extra.mounts, reverse=True):
        subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    for name in extra.netns:
        if SUITE_NAMES.match(name):
            _ip("netns", "del", name)
    for name in extra.links:
        _ip("link", "del", name)
    if not extra.dev_null_is_device and os.geteuid() == 0:
        os.remove(os.devnull)
        os.mknod(os.devnull, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(os.devnull, 0o666)
