"""The suite's check that it leaves the host as it found it (`tests.support.host_guard`,
run by tests/conftest.py after the last test) sees what a test leaves, and removes it."""

from __future__ import annotations

import os
import subprocess

from tests.support import host_guard
from tests.support.waiting import wait_until


def test_a_process_left_behind_is_named_and_ended() -> None:
    before = host_guard.snapshot()
    # A process the suite could have started (the several-host harness names its shells so).
    left = subprocess.Popen(["bash", "-c", "exec -a quanta-host sleep 300"])
    try:
        extra = host_guard.leftovers(before, settle_s=0)
        assert left.pid in extra.processes
        assert any("quanta-host" in line for line in host_guard.describe(extra))
        # Only ours: a test running beside this one may have started processes of its own.
        host_guard.clean(host_guard.HostState(processes={left.pid: extra.processes[left.pid]}))
        assert left.wait(timeout=30) != 0  # killed, not ended by itself
        assert left.pid not in host_guard.leftovers(before, settle_s=0).processes
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()



def test_what_another_run_started_is_left_alone() -> None:
    """Two runs on one host (two clones, two engineers) never remove each other's services."""
    before = host_guard.snapshot()
    env = {**os.environ, host_guard.SESSION_VARIABLE: "another-run"}
    theirs = subprocess.Popen(["bash", "-c", "exec -a quanta-host sleep 300"], env=env)
    try:
        wait_until(lambda: theirs.pid in host_guard.snapshot().processes, 30,
                   "the other run's process showing")
        assert theirs.pid not in host_guard.leftovers(before, settle_s=0).processes
        assert theirs.pid in host_guard.leftovers(before, settle_s=0,
                                                  session="another-run").processes
    finally:
        theirs.kill()
        theirs.wait()
