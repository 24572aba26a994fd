"""A client generated from the live schema by openapi-python-client works against a live
service: list jobs, create one, follow it, download a file and the archive."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import REPO
from tests.support.live_service import running_service
from tests.support.waiting import wait_until

GENERATOR = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_service(tmp_path_factory.mktemp("generated-client")) as live:
        yield live


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`tmp_path` on sys.path for this test only, and the generated package's modules
    forgotten after it: a later test must not import a stale `quanta_api`."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n == "quanta_api" or n.startswith("quanta_api.")]:
        del sys.modules[name]


def _generate(schema: bytes, root: Path) -> Any:
    (root / "openapi.json").write_bytes(schema)
    done = subprocess.run(
        [GENERATOR, "generate", "--path", str(root / "openapi.json"), "--output-path",
         str(root / "quanta_api"), "--meta", "none",
         "--config", str(REPO / "docs" / "openapi-python-client.yaml")],
        capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
             f"{os.environ.get('PATH', '')}"})  # its post-hooks run ruff
    assert done.returncode == 0, done.stdout + done.stderr
    # Every operation and model came out (the generator warns of what it had to leave out).
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    return importlib.import_module("quanta_api")  # `root` is on sys.path: `importable`


@pytest.mark.slow
@pytest.mark.skipif(GENERATOR is None, reason="openapi-python-client is not installed "
                    "(pip install -e '.[test]')")
def test_a_generated_client_lists_creates_and_downloads(service: Any, importable: Path
                                                        ) -> None:
    package = _generate(httpx.get(f"{service.url}/openapi.json", timeout=60).content,
                        importable)
    from quanta_api.api.jobs import (  # type: ignore[import-not-found]
        create_job,
        download_archive,
        download_artifact,
        get_job,
        list_artifacts,
        list_jobs,
    )
    from quanta_api.models import (  # type: ignore[import-not-found]
        JobOut,
        JobPage,
        RemoteSourceSpec,
        SourceJobCreate,
        SourceResult,
        TaskName,
    )

    client = package.Client(base_url=service.url, raise_on_unexpected_status=True,
                            timeout=httpx.Timeout(60))
    page = list_jobs.sync(client=client)
    assert isinstance(page, JobPage) and page.total == 0
    body = SourceJobCreate(spec=RemoteSourceSpec(  # no kind: the class says it
        source_task=TaskName.DIGITS, nb_of_epochs=1, nb_of_samples=64, seed=1,
        width_multiplier=0.0625))
    job = create_job.sync(client=client, body=body)
    assert isinstance(job, JobOut) and job.kind == "source"
    job_id = job.id

    def ended() -> Any:
        """The job once it has ended, read with the generated client's own get_job."""
        seen = get_job.sync(job_id, client=client)
        return seen if seen.status not in ("queued", "running") else None

    job = wait_until(ended, 300, f"job {job_id} ending (seen by the generated client)",
                     interval=0.5)
    assert job.status == "succeeded", (job.error, service.text()[-3000:])
    assert isinstance(job.result, SourceResult)
    assert job.result.test_metrics["categorical_accuracy"] is not None
    assert job.spec.source_task == TaskName.DIGITS
    files = list_artifacts.sync(job.id, client=client)
    paths = {item.path for item in files.items}
    assert job.result.model_summary in paths and job.result.training_dir
    summary = download_artifact.sync_detailed(job.id, job.result.model_summary, client=client)
    assert summary.status_code == 200 and b"Total params" in summary.content
    archive = download_archive.sync(job.id, client=client)
    with zipfile.ZipFile(io.BytesIO(archive.payload.read())) as zipped:
        assert set(zipped.namelist()) == paths
    assert list_jobs.sync(client=client).total == 1
