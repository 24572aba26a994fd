"""The host as the suite found it: what the suite may leave behind, looked for at the end.

The suite starts servers, workers, browsers, network namespaces, veth pairs, bridges and
mounts. A test that fails half-way must still leave none of them, and none of the host's
own services broken: a /dev/null replaced by a plain file once made the host's RabbitMQ
(which the project does not use) spawn an `epmd-starter` every minute that never
ended, until the load reached 35. `snapshot` is taken before the first test and after the
last; `leftovers` names what appeared in between, and `clean` removes it.

Only what this run started counts, so that two runs on one host (two engineers, two
clones) never remove each other's services: the run's id is in the environment of every
process it starts (`SESSION_VARIABLE`, inherited by the workers, the servers and what they
start), and in the names of the namespaces, links and folders of `tests.support.netns`
(`session_tag`). A host's own processes and another run's are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

#: Command lines of what the suite starts (and of what a broken host piles up).
SUITE_PROCESSES = re.compile(
    r"-m (api\.serve|worker\.main|celery)\b|moto_server|mlflow\b.*server|flower\b"
    r"|redis-server \S*:(?!6379\b)\d+|/usr/bin/chromium|chrome_crashpad"
    r"|quanta-host")
#: Names of the namespaces, links and folders `tests.support.netns` makes, then its tag.
SUITE_NAMES = re.compile(r"^(quanta-hosts-|quanta-|qb|qv|qi)")
#: The run's id, set by the run's first process and inherited by all it starts.
SESSION_VARIABLE = "PYTEST_HOST_GUARD_SESSION"


def start_session() -> str:
    """A new id for this run, in the environment of every process it will start."""
    os.environ[SESSION_VARIABLE] = uuid.uuid4().hex
    return os.environ[SESSION_VARIABLE]


def session_tag() -> str:
    """Three hex digits of the run's id, for names the kernel keeps short (links: 15 bytes);
    random when no run is under way (a benchmark)."""
    return os.environ.get(SESSION_VARIABLE, uuid.uuid4().hex)[:3]


def _ours(name: str, tag: str) -> bool:
    found = SUITE_NAMES.match(name)
    return bool(found) and name[found.end():].startswith(tag)


def _started_by(pid: int, session: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{SESSION_VARIABLE}={session}".encode() in environ.split(b"\0")


@dataclass
class HostState:
    processes: dict[int, str] = field(default_factory=dict)
    netns: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    mounts: set[str] = field(default_factory=set)
    dev_null_is_device: bool = True
    stuck_starters: dict[int, str] = field(default_factory=dict)


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


def _stuck_starters(older_than_s: float = 30.0) -> dict[int, str]:
    """RabbitMQ's `epmd-starter` processes alive for over `older_than_s` (one is started every
    minute and ends within a second on a healthy host)."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    stuck = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "epmd-starter" not in cmdline:
                continue
            started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
            if uptime - started > older_than_s:
                stuck[int(entry.name)] = cmdline[:120]
    return stuck


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
        dev_null_is_device=stat.S_ISCHR(os.stat(os.devnull).st_mode),
        stuck_starters=_stuck_starters())


def leftovers(before: HostState, settle_s: float = 15.0,
              session: str | None = None) -> HostState:
    """What this run (`session`, by default the current one) left on the host that was not
    there before, once processes that are ending have had `settle_s` seconds to end."""
    session = session or os.environ.get(SESSION_VARIABLE, "")
    tag = session[:3]
    deadline = time.monotonic() + settle_s
    while True:
        now = snapshot()
        extra = HostState(
            processes={pid: cmd for pid, cmd in now.processes.items()
                       if pid not in before.processes and _started_by(pid, session)},
            netns={n for n in now.netns - before.netns if _ours(n, tag)},
            links={n for n in now.links - before.links if _ours(n, tag)},
            mounts={m for m in now.mounts - before.mounts if _ours(Path(m).name, tag)},
            dev_null_is_device=now.dev_null_is_device or not before.dev_null_is_device,
            stuck_starters={pid: cmd for pid, cmd in now.stuck_starters.items()
                            if pid not in before.stuck_starters})
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
    lines += [f"the host's RabbitMQ has an epmd-starter running for over 30 s (pid {pid}; it "
              f"ends within a second on a healthy host): {cmd}"
              for pid, cmd in sorted(extra.stuck_starters.items())]
    return lines


def clean(extra: HostState) -> None:
    """Remove what the suite left (processes killed, namespaces, links, mounts removed)."""
    for pid in extra.processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for path in sorted(extra.mounts, reverse=True):
        subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    for name in extra.netns:
        _ip("netns", "del", name)
    for name in extra.links:
        _ip("link", "del", name)
    if not extra.dev_null_is_device and os.geteuid() == 0:
        os.remove(os.devnull)
        os.mknod(os.devnull, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(os.devnull, 0o666)
