"""The suite's two tiers, declared once.

The default run (`pytest`, the README's test command) is the *fast tier*: every test but
those marked `slow`, about 10 minutes on two cores. The *slow tier* holds the tests that
run the whole service for minutes: a real browser, several hosts, the documents' commands
run as written, workers killed and taken over. CI runs both (`pytest --tier all`, or the
fast tier then `pytest --tier slow`). A test is slow when it carries `pytest.mark.slow`,
or when its file is listed here (so that the tier of a whole file is decided in one place).
Naming test files or node ids on the command line runs them whatever their tier.
"""

from __future__ import annotations

#: Files in the slow tier, each with why (measured on two quiet cores).
SLOW_FILES: dict[str, str] = {
    "tests/system/test_docs_run_as_written.py": "every README and service.md block (10 min)",
    "tests/system/test_store_wiring.py": "two hosts through PostgreSQL and S3 (1.7 min)",
    "tests/system/test_several_hosts.py": "hosts in network namespaces (1.5 min)",
    "tests/system/test_study_e2e.py": "a study on two real workers (1.3 min)",
    "tests/system/test_dashboard.py": "a real browser on a live service (1.2 min)",
    "tests/system/test_dashboard_own_networks.py": "a real browser, a user's network (40 s)",
    "tests/system/test_faults.py": "workers killed, Redis and the API restarted (45 s)",
    "tests/system/test_own_networks_service.py": "a study of named layers end to end (45 s)",
    "tests/system/test_networks_e2e.py": "the seed's networks through the service (30 s)",
    "tests/worker/test_one_writer.py": "two workers taking a job over (1.3 min)",
    "tests/worker/test_liveness.py": "a worker's takeover after kill -9 (50 s)",
    "tests/worker/test_memory.py": "a worker's dataset cache over three jobs (30 s)",
    "tests/quanta/test_builtin_unchanged.py": "the earlier library's files and today's (50 s)",
    "tests/quanta/test_mlflow_export.py": "a real MLflow server and a live service (1.5 min)",
}

TIERS = ("fast", "slow", "all")

#: Folders whose files take longest, collected first: the two processes take whole files
#: in collection order, so long files started last would leave one process idle at the end
#: while the many short files of the other folders fill the gaps best when they come last.
LONG_FOLDERS = ("tests/quanta", "tests/worker", "tests/system")
#: The longest single test (most of the slow tier's time) starts before everything else.
LONGEST_FILE = "tests/system/test_docs_run_as_written.py"


def run_order(path: str) -> int:
    """Where a test file comes in the run (`path` relative to the repository)."""
    if path == LONGEST_FILE:
        return -1
    for rank, folder in enumerate(LONG_FOLDERS):
        if path.startswith(folder + "/"):
            return rank
    return len(LONG_FOLDERS)
