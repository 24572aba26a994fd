"""The web dashboard in a real browser: Debian's headless Chromium driven by Playwright,
against a real `quanta-serve` (uvicorn, a real worker on the embedded broker, SQLite)
training the tiny network on the offline `digits` task.

Everything goes through the page as a user would: the forms (generated from the
OpenAPI schema) submit a source job and a study, the study page fills in live from the
event stream until its curve has every layer, an artifact is opened, two studies are
compared, a job is cancelled from the table, and with tokens configured a wrong token
shows nothing. Screenshots go to $QUANTA_SCREENSHOTS (default: the test's folder).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import NEEDS_BROWSER, chromium
from tests.support.jobs import wait_job
from tests.support.live_service import LiveService

TOKEN = "dashboard-test-token-0123456789"
#: Waits on real training: generous, for a loaded machine (a few seconds each when idle).
WAIT_MS = 900_000

pytestmark = [pytest.mark.slow, *NEEDS_BROWSER]


def start_server(tmp: Path, workers: int, **settings: Any) -> LiveService:
    """A `LiveService` answering, that cancels and beats quickly (a job cancelled from the
    table ends within the page's wait)."""
    return LiveService(tmp, workers, stop_timeout=20, cancel_poll_s=0.1, heartbeat_s=1,
                       **settings).wait_ready(timeout=300)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("QUANTA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    server = LiveService(tmp_path_factory.mktemp("dashboard"), 1, stop_timeout=20,
                         cancel_poll_s=0.1, heartbeat_s=1)
    try:
        yield server.wait_ready(timeout=300)
    finally:
        server.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.set_default_timeout(30_000)
    page.on("dialog", lambda dialog: dialog.accept())  # the cancel confirmation
    try:
        yield page
    finally:
        context.close()
    # A refused request (401 on purpose, 422 on purpose) is logged by Chromium as an error.
    unexpected = [e for e in errors if not re.search(r"status of (401|409|422)", e)]
    assert not unexpected, unexpected


def job_id(page: Any, kind: str) -> str:
    page.wait_for_url(re.compile(rf"#/{kind}/[0-9a-f]+$"))
    return page.url.rsplit("/", 1)[-1]


def test_page_is_served_with_a_strict_policy(server: LiveService) -> None:
    http = httpx.Client(timeout=60)  # a loaded machine answers slowly
    response = http.get(f"{server.base}/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in response.text  # every script is a file
    for asset in ("/ui/js/main.js", "/ui/vendor/uPlot.iife.min.js", "/ui/app.css"):
        assert http.get(f"{server.base}{asset}").status_code == 200, asset
    assert http.get(f"{server.base}/ui/../api/main.py").status_code == 404
    assert "/" not in http.get(f"{server.base}/openapi.json").json()["paths"]


@pytest.mark.timeout(2400)
def test_submit_watch_open_compare_cancel(server: LiveService, page: Any,
                                          shots: Path) -> None:
    base = server.base
    # 1. A source job, through the form generated from the schema.
    page.goto(f"{base}/#/submit/source")
    page.wait_for_selector("#form-source")
    assert page.input_value("#f-source_task") == "digits"  # runs offline, unlike cifar10
    page.select_option("#f-source_task", "digits")
    page.fill("#f-nb_of_epochs", "2")
    page.fill("#f-nb_of_samples", "64")
    page.fill("#f-width_multiplier", "0.0625")
    page.fill("#f-seed", "1")
    page.click("#submit-job")
    source = job_id(page, "job")
    page.wait_for_selector("h1 .badge[data-status=succeeded]", timeout=WAIT_MS)
    page.wait_for_selector("#artifacts tbody tr")
    page.wait_for_selector(".chart-loss .u-over")
    files = httpx.get(f"{base}/v1/jobs/{source}/artifacts").json()["items"]
    assert page.locator("#artifacts tbody tr").count() == len(files) > 0

    # 2. A study of it; the API's field errors come back beside the fields.
    page.click("text=Study its transferability")
    page.wait_for_selector("#form-study")
    assert page.input_value("#f-source_weights-job") == source
    page.fill("#f-nb_of_target_epochs", "0")
    page.click("#submit-job")
    page.wait_for_selector("#err-nb_of_target_epochs:not(:empty)")
    assert "greater than 0" in page.inner_text("#err-nb_of_target_epochs")
    assert page.inner_text("#err-layers")  # none chosen
    assert "Input should be" not in page.inner_text("#form-study")  # pydantic's wording
    # λ_s moves in a few epochs: the quantas learn 30 times faster than the network.
    assert page.input_value("#f-quanta_learning_rate_multiplier") == "30"
    assert "#/submit/study" in page.url  # nothing was created
    page.fill("#f-nb_of_target_epochs", "2")
    page.check("#f-layers-0")
    page.check("#f-layers-3")
    page.fill("#f-nb_of_runs", "2")
    page.fill("#f-nb_of_target_samples", "64")
    page.fill("#f-seed", "42")
    page.check("#f-witness")
    page.click("#submit-job")
    study = job_id(page, "study")
    second = httpx.post(f"{base}/v1/jobs", json={"kind": "study", "spec": {
        "source_task": "digits", "target_task": "digits", "source_weights": {"job": source},
        "layers": [0, 6], "nb_of_runs": 1, "nb_of_target_epochs": 1, "nb_of_target_samples": 64,
        "width_multiplier": 0.0625, "seed": 7}}).json()["id"]
    page.wait_for_selector("#study-grid .cell[data-job]")
    assert page.locator("#study-grid .cell[data-job]").count() == 4

    # 3. The study page fills in live, then shows the service's own summary.
    page.wait_for_selector("#study-grid .cell[data-status=succeeded]", timeout=WAIT_MS)
    page.wait_for_selector("#chart-transferability .u-over", timeout=WAIT_MS)
    page.screenshot(path=shots / "study-running.png", full_page=True)
    page.wait_for_selector("#chart-transferability[data-layers='0,3']", timeout=WAIT_MS)
    page.wait_for_selector("#chart-transferability[data-final=true]", timeout=WAIT_MS)
    assert page.locator("#study-grid .cell[data-status=succeeded]").count() == 4
    summary = httpx.get(f"{base}/v1/jobs/{study}/summary").json()
    for entry in ("0", "3"):
        cells = page.locator(f"#study-table tr[data-entry='{entry}'] td").all_inner_texts()
        assert cells[1] == "2/2"
        assert cells[2] == f"{summary['entries'][entry]['lambda_s'][entry]['mean']:.4f}"
    page.screenshot(path=shots / "study.png", full_page=True)
    # Measured layers are points with whole intervals, not a line through layers 1, 2...
    chart = page.locator("#chart-transferability .chart")
    page.wait_for_selector("#chart-transferability .chart[data-y-min]")
    assert chart.get_attribute("data-intervals") == "true"
    bounds = [b for e in ("0", "3") for b in summary["entries"][e]["lambda_s"][e]["ci95"]]
    assert float(chart.get_attribute("data-y-min")) <= min(min(bounds), 0)
    assert float(chart.get_attribute("data-y-max")) >= max(max(bounds), 1)

    # 4. Open a child's artifact from the grid; #/jobs/ID (the API's path) leads there too.
    page.click("#study-grid .cell[data-entry='3'][data-run='1']")
    child = job_id(page, "job")
    page.goto(f"{base}/#/jobs/{child}")
    page.wait_for_url(re.compile(rf"#/job/{child}$"))
    page.wait_for_selector("#artifacts")
    listing = httpx.get(f"{base}/v1/jobs/{child}/artifacts").json()["items"]
    quantas = next(a for a in listing if a["path"].endswith("quantas_r_0_l_3.jsonl"))
    row = page.locator(f"#artifacts tr[data-path='{quantas['path']}']")
    assert quantas["sha256"] in row.inner_text()
    row.locator("[data-open]").click()
    page.wait_for_selector("#preview-text")
    assert "quanta_weights" in page.inner_text("#preview-text")
    assert page.locator(".chart-lambda").get_attribute("data-points") == "3"  # start + 2 epochs

    # 5. Compared with a second study (submitted through the API, at step 2).
    with httpx.Client(base_url=base, timeout=30) as http:
        ended = wait_job(http, second, timeout=WAIT_MS / 1000)
    assert ended["status"] == "succeeded", server.text()[-3000:]
    page.goto(f"{base}/#/compare")
    page.check(f"#study-picker input[value='{study}']")
    page.check(f"#study-picker input[value='{second}']")
    page.click("#compare-go")
    page.wait_for_url(re.compile(r"#/compare\?ids="))
    assert study in page.url and second in page.url
    page.wait_for_selector("#compare-table tbody tr, .error-box")  # a failure says why
    assert page.locator(".error-box").all_inner_texts() == []
    page.wait_for_selector("#compare-curve[data-studies='2'] .u-over")
    assert page.locator("#compare-table tbody tr").count() == 2
    assert page.locator("#compare-table .badge[data-status=succeeded]").count() == 2
    assert page.locator(".error-box").count() == 0
    # Their specs differ in more than the seed (layers, runs, epochs...): it says so.
    page.wait_for_selector("#compare-differences .warn-box")
    assert "in more than the seed: " in page.inner_text("#compare-differences")
    assert "layers" in page.inner_text("#compare-differences")
    page.screenshot(path=shots / "compare.png", full_page=True)

    # 6. The jobs table: filter, then cancel a long job from it.
    long = httpx.post(f"{base}/v1/jobs", json={"kind": "source", "spec": {
        "source_task": "digits", "nb_of_epochs": 2000, "nb_of_samples": 64,
        "width_multiplier": 0.0625}}).json()["id"]
    page.goto(f"{base}/#/jobs")
    page.wait_for_selector(f"#jobs-table tr[data-job='{long}']")
    page.screenshot(path=shots / "jobs.png", full_page=True)
    page.click(f"[data-cancel='{long}']")
    page.wait_for_selector(f"#jobs-table tr[data-job='{long}'][data-status=cancelled]",
                           timeout=60_000)
    page.select_option("#filter-kind", "study")
    page.wait_for_url(re.compile(r"kind=study"))
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr[data-job]')"
                           ".length == 2")
    kinds = page.locator("#jobs-table tbody tr td:nth-child(2)").all_inner_texts()
    assert kinds == ["study", "study"]


def test_a_wrong_token_shows_nothing(browser: Any, tmp_path: Path, shots: Path) -> None:
    server = start_server(tmp_path, workers=0, api_tokens=f"alice:{TOKEN}")
    context = browser.new_context(viewport={"width": 1200, "height": 700})
    try:
        page = context.new_page()
        page.goto(f"{server.base}/#/jobs")
        page.wait_for_selector("#token-dialog[open]")
        assert "needs an API token" in page.inner_text("#token-message")
        assert page.locator("#view *").count() == 0
        page.fill("#token-input", "not-the-token-at-all")
        page.click("#token-submit")
        page.wait_for_selector("#token-message.wrong")
        assert "refused" in page.inner_text("#token-message")
        assert page.locator("#view *").count() == 0
        assert page.evaluate("sessionStorage.length") == 0
        page.screenshot(path=shots / "token-refused.png")
        page.fill("#token-input", TOKEN)
        page.click("#token-submit")
        page.wait_for_selector("#jobs-table")
        assert not page.locator("#token-dialog").evaluate("d => d.open")
        assert page.evaluate("Object.values(sessionStorage)") == [TOKEN]
        assert page.evaluate("localStorage.length") == 0  # kept for this tab only
        # Another tab has no token, so it shows nothing.
        other = context.new_page()
        other.goto(f"{server.base}/#/jobs")
        other.wait_for_selector("#token-dialog[open]")
        assert other.locator("#view *").count() == 0
    finally:
        context.close()
        server.stop()
