"""The README's walkthrough, run as written on a live `quanta-serve`: its bash blocks are
taken from README.md (only the address is replaced), and what they produce must mean
something: a source well above chance, and λ_s moved from where it started."""

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
from live_service import LiveService

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT_SERVER = "http://127.0.0.1:8000"
#: λ_s when training starts (the QUANTA layer's initial weights).
START = 0.9002495
#: How far λ_s must move for the walkthrough to show anything (its noise is below 0.002).
MOVED = 0.01


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def walkthrough() -> str:
    """The curl walkthrough, then the study that builds on it, as one script."""
    blocks = bash_blocks(README.read_text())
    first = next(b for b in blocks if '"kind": "source"' in b and "S=" in b)
    study = next(b for b in blocks if '"kind": "study"' in b and "$SRC" in b and "$S/" in b)
    return first + study


def test_the_walkthrough_is_in_the_readme() -> None:
    script = walkthrough()
    assert "quanta-client wait $SRC" in script and "--fail-with-body" in script
    assert "plots/transferability.png" in script


def test_quanta_serve_says_where_the_docs_and_the_dashboard_are() -> None:
    from api.serve import where

    lines = where("127.0.0.1", 8080)
    assert "http://127.0.0.1:8080/docs" in lines
    assert "dashboard:         http://127.0.0.1:8080/" in lines
    assert "http://[::1]:8000/docs" in where("::1", 8000)


@pytest.mark.slow
def test_the_readme_walkthrough_shows_transfer(tmp_path: Path) -> None:
    service = LiveService(tmp_path / "service", workers=1)
    work = tmp_path / "user"
    work.mkdir()
    try:
        service.wait_ready()
        script = walkthrough().replace(DEFAULT_SERVER, service.url)
        script += '\necho "IDS $SRC $JOB $STUDY"\n'
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ['PATH']}", "QUANTA_SERVER": service.url}
        env.pop("QUANTA_TOKEN", None)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                              capture_output=True, text=True, timeout=540)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:],
                                      service.text()[-3000:])
        # quanta-serve said where to go first.
        assert f"API documentation: {service.url}/docs" in service.text()
        assert f"dashboard:         {service.url}/" in service.text()
        source_id, transfer_id, study_id = done.stdout.strip().splitlines()[-1].split()[1:]
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
        with zipfile.ZipFile(work / "results.zip") as archive:
            assert "digits_to_digits/quantas_r_1_l_2.jsonl" in archive.namelist()
        assert (work / "transferability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert '"kind":"weights"' in done.stdout.replace(" ", "")
        png = api.get(f"/v1/jobs/{study_id}/plots/transferability.png").content
        (tmp_path / "transferability.png").write_bytes(png)
        targets = [run["target_metrics"]["categorical_accuracy"]
                   for run in transfer["result"]["runs"]]
        print(f"source accuracy {source['result']['test_metrics']['categorical_accuracy']:.3f}"
              f"; transfer target accuracy {targets} λ_s {finals}; study λ_s {means}")
        assert zipfile.is_zipfile(io.BytesIO(api.get(f"/v1/jobs/{transfer_id}/archive").content))
    finally:
        service.stop()
