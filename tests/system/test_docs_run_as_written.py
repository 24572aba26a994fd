"""The documents' commands run as written (`doc_blocks`): README.md's walkthrough, its
command-line, library, client, study and comparison examples, and docs/service.md's,
against one live `quanta-serve`, and what the README says the user should see holds: a
source well above chance, λ_s moved from where it started."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support.doc_blocks import DOCUMENTS, REPO, blocks, script
from tests.support.live_service import LiveService, running_service

README = REPO / "README.md"
#: λ_s when training starts (the QUANTA layer's initial weights).
START = 0.9002495
#: How far λ_s must move for an example to show anything (its noise is below 0.002).
MOVED = 0.01


def test_every_block_runs_or_says_why_not() -> None:
    """A new block runs by default; skipping one takes a marker with its reason."""
    skipped = []
    for document in DOCUMENTS:
        found = blocks(document)
        assert found, document
        for block in found:
            if block.skip is not None:
                assert len(block.skip) > 10, f"{block.where}: say why it cannot run"
                skipped.append(f"{block.where}: {block.skip}")
    print("\n".join(["skipped:", *skipped]))
    # What runs includes the walkthrough and its study, as written.
    runs = "\n".join(b.code for b in blocks(README) if b.skip is None)
    assert "quanta-client wait $SRC" in runs and "--fail-with-body" in runs
    assert "plots/transferability.png" in runs and "python -m quanta.tidy" in runs


def test_quanta_serve_says_where_the_docs_and_the_dashboard_are() -> None:
    from api.serve import where

    lines = where("127.0.0.1", 8080)
    assert "http://127.0.0.1:8080/docs" in lines
    assert "dashboard:         http://127.0.0.1:8080/" in lines
    assert "http://[::1]:8000/docs" in where("::1", 8000)


def _run(document: Path, service: LiveService, work: Path, timeout: float
         ) -> subprocess.CompletedProcess:
    code = script(document, service.url, work)
    code += '\necho "IDS ${SRC:-} ${JOB:-} ${STUDY:-} ${STUDY_A:-} ${STUDY_B:-}"\n'
    (work / "docs").symlink_to(REPO / "docs")  # blocks that read the project's files
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ['PATH']}", "QUANTA_SERVER": service.url, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("QUANTA_TOKEN", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:],
                                  service.text()[-3000:])
    return done


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    with running_service(tmp_path_factory.mktemp("service")) as live:
        yield live


@pytest.mark.slow
@pytest.mark.timeout(2400)  # every README example trains: minutes, more on a busy machine
def test_the_readme_runs_as_written(service: LiveService, tmp_path: Path) -> None:
    done = _run(README, service, tmp_path, timeout=2100)
    out = done.stdout
    # quanta-serve said where to go first.
    assert f"API documentation: {service.url}/docs" in service.text()
    # The offline command-line example: each run's target learnt and λ_s moved.
    runs = re.findall(r"run \d: source accuracy ([\d.]+), target accuracy ([\d.]+), "
                      r"final λ_s by layer \{2: ([\d.]+)\}", out)
    assert len(runs) >= 3, out[-3000:]  # two runs, then one continued
    assert all(float(target) > 0.5 and abs(float(lam) - START) > MOVED
               for _, target, lam in runs[:2]), runs
    # The tidy table of those runs.
    assert re.search(r"^\d+ 0\.\d+$", out, flags=re.M), out[-2000:]
    ids = out.strip().splitlines()[-1].split()[1:]
    source_id, transfer_id, study_id = ids[:3]
    api = httpx.Client(base_url=service.url, timeout=60)
    source = api.get(f"/v1/jobs/{source_id}").json()
    assert source["result"]["test_metrics"]["categorical_accuracy"] > 0.7  # chance: 0.1
    assert "Total params" not in json.dumps(source)  # the model summary is a file
    transfer = api.get(f"/v1/jobs/{transfer_id}").json()
    finals = [run["quantas"]["2"]["source"] for run in transfer["result"]["runs"]]
    assert len(finals) == 2 and all(abs(f - START) > MOVED for f in finals), finals
    summary = api.get(f"/v1/jobs/{study_id}/summary").json()
    means = {entry: data["lambda_s"][entry]["mean"]
             for entry, data in summary["entries"].items()}
    assert set(means) == {"0", "3", "6"} and summary["complete"], summary
    assert max(abs(m - START) for m in means.values()) > MOVED, means
    # The files the walkthrough downloaded are what they say.
    with zipfile.ZipFile(tmp_path / "results.zip") as archive:
        assert "digits_to_digits/quantas_r_1_l_2.jsonl" in archive.namelist()
    assert (tmp_path / "transferability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"kind":"weights"' in out.replace(" ", "")
    assert zipfile.is_zipfile(io.BytesIO(api.get(f"/v1/jobs/{transfer_id}/archive").content))
    targets = [run["target_metrics"]["categorical_accuracy"]
               for run in transfer["result"]["runs"]]
    print(f"source accuracy {source['result']['test_metrics']['categorical_accuracy']:.3f}"
          f"; transfer target accuracy {targets} λ_s {finals}; study λ_s {means}")
    (tmp_path / "study.png").write_bytes(
        api.get(f"/v1/jobs/{study_id}/plots/transferability.png").content)


@pytest.mark.slow
def test_the_service_guide_runs_as_written(service: LiveService, tmp_path: Path) -> None:
    _run(REPO / "docs" / "service.md", service, tmp_path, timeout=600)
    # The client it generates from the live schema.
    assert (tmp_path / "quanta_api" / "client.py").is_file()
