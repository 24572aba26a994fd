"""The built-in networks write the same seeded files as before user networks existed: the
fingerprints of `tests/support/builtin_fingerprint.py`, made with the code before that change,
reproduced byte for byte (JSONL files; models by config and weights)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.builtin_fingerprint import fingerprints

EXPECTED = Path(__file__).parent / "data" / "builtin_fingerprints.json"


def test_the_built_in_networks_write_the_same_seeded_files(tmp_path):
    expected = json.loads(EXPECTED.read_text())
    found = fingerprints(tmp_path)
    assert sorted(found) == sorted(expected)  # the same files, no new ones
    changed = [name for name in expected if found[name] != expected[name]]
    assert not changed, f"files that differ from the code before: {changed}"
