"""The suite's check that it leaves the host as it found it (`tests.support.host_guard`,
run by tests/conftest.py after the last test) sees what a test leaves, and removes it."""

from __future__ import annotations

import subprocess

from tests.support import host_guard


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

