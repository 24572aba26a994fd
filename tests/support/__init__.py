"""Helpers of the test suite, imported by the tests as a package (`tests.support.X`).

Fixtures live in the `conftest.py` of the folder that uses them; what is not a fixture
(constants, builders of files, process wrappers, waits) lives here, once.
"""

from pathlib import Path

#: The repository's root (the working tree the suite runs in).
REPO = Path(__file__).resolve().parents[2]
