"""The built-in networks write the same seeded files as before user networks existed: the
fingerprints (JSONL files byte for byte; models by config and weights) that the library of
the last commit before that change writes on this machine, reproduced by today's code
(`tests.support.builtin_fingerprint`)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import REPO
from tests.support.builtin_fingerprint import BEFORE_OWN_NETWORKS, fingerprints, of_commit


def _history_has(commit: str) -> bool:
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True, check=False)
    return found.returncode == 0


@pytest.mark.skipif(not _history_has(BEFORE_OWN_NETWORKS),
                    reason="the repository's history (a clone, not an archive) is needed")
def test_the_built_in_networks_write_the_same_seeded_files(tmp_path):
    expected = of_commit(BEFORE_OWN_NETWORKS, REPO, tmp_path / "before")
    found = fingerprints(tmp_path / "now")
    assert len(expected) >= 20  # a source and three transfers' files
    assert sorted(found) == sorted(expected)  # the same files, no new ones
    changed = [name for name in expected if found[name] != expected[name]]
    assert not changed, f"files that differ from the code before: {changed}"
