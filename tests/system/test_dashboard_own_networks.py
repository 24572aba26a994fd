"""The dashboard with a network of the user's, in a real browser (Debian's Chromium driven by
Playwright) against a real `quanta-serve` (one worker, embedded broker, SQLite).

A small residual network (tests/support/own_networks.py) is uploaded through the study form, which
then offers its transferable layers by name; a study of three of them is submitted through
the form, and once it has succeeded its page draws them one after the other in the
network's order with their names as ticks, and a child's page labels its λ_s by its layer.
The transfer form offers the same layers in a select. A screenshot of the study page goes
to $QUANTA_SCREENSHOTS (default: the test's folder) as study-own-network.png.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import NEEDS_BROWSER, chromium
from tests.support.live_service import LiveService, running_service
from tests.support.own_networks import residual, trained

pytestmark = [pytest.mark.slow, *NEEDS_BROWSER]

#: The residual network's transferable layers, in graph order (`shared` is used twice and
#: `head` is the classifier: neither is offered).
TRANSFERABLE = ["c1", "c2", "bn2", "add", "relu", "gap", "drop"]
CHOSEN = ["c1", "bn2", "relu"]
#: Waits on real training: generous for a loaded machine (seconds when idle).
WAIT_MS = 600_000


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(residual(), tmp_path_factory.mktemp("network") / "residual.keras")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with running_service(tmp_path_factory.mktemp("dashboard-own"), workers=1,
                         cancel_poll_s=0.1, heartbeat_s=1) as live:
        yield live


@pytest.fixture
def page(server: LiveService) -> Iterator[Any]:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}"))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.set_default_timeout(30_000)
        yield page
        context.close()
    # The 422 asked for on purpose is logged by Chromium as an error.
    unexpected = [e for e in errors if not re.search(r"status of 422", e)]
    assert not unexpected, unexpected


def chart(page: Any, box: str, attribute: str) -> Any:
    return json.loads(page.locator(f"{box} .chart").get_attribute(attribute))


def spec_preview(page: Any) -> dict[str, Any]:
    return json.loads(page.inner_text("#spec-preview"))["spec"]


def test_a_study_of_named_layers_through_the_dashboard(server: LiveService, network: Path,
                                                       page: Any) -> None:
    base = server.url
    # 1. The study form: the network uploaded from it, its transferable layers offered.
    page.goto(f"{base}/#/submit/study")
    page.wait_for_selector("#form-study")
    for field in ("preprocess", "resize_method", "init_from_source"):  # from the schema
        assert page.locator(f"[data-field='{field}']").count() == 1, field
    assert page.locator("#f-layers-6").is_visible()  # the built-in networks' layers, as before
    page.select_option("#f-source_model", "upload")
    page.set_input_files("#upload-source_model", network)
    page.wait_for_selector("#f-layers-names input")
    names = page.locator("#f-layers-names input").evaluate_all("boxes => boxes.map(b => b.value)")
    assert names == TRANSFERABLE
    assert not page.locator("#f-layers-6").is_visible()
    upload = page.input_value("#f-source_model-upload")
    # An API error comes back beside its field: no layer chosen.
    page.click("#submit-job")
    page.wait_for_selector("#err-layers:not(:empty)")
    assert "#/submit/study" in page.url
    for name in reversed(CHOSEN):  # clicked out of order: sent in the network's order
        page.check(f"#f-layers-{name}")
    page.fill("#f-nb_of_runs", "2")
    page.fill("#f-nb_of_target_epochs", "2")
    page.fill("#f-nb_of_target_samples", "64")
    page.fill("#f-seed", "3")
    spec = spec_preview(page)
    assert spec["source_model"] == {"upload": upload} and "source_weights" not in spec
    assert spec["layers"] == CHOSEN
    page.click("#submit-job")
    page.wait_for_url(re.compile(r"#/study/[0-9a-f]+$"))
    study = page.url.rsplit("/", 1)[-1]

    # 2. The study page: its layers by name, in the network's order, from its summary.
    page.wait_for_selector("#study-grid .cell[data-job]")
    entries = page.locator("#study-grid .cell[data-run='0']").evaluate_all(
        "cells => cells.map(c => c.dataset.entry)")
    assert entries == CHOSEN
    page.wait_for_selector("#chart-transferability[data-final=true] .chart[data-x-ticks]",
                           timeout=WAIT_MS)
    summary = httpx.get(f"{base}/v1/jobs/{study}/summary", timeout=60).json()
    assert list(summary["entries"]) == CHOSEN, server.text()[-3000:]
    box = "#chart-transferability"
    assert chart(page, box, "data-x-ticks") == CHOSEN  # the ticks as drawn
    assert chart(page, box, "data-x") == CHOSEN
    alone = chart(page, box, "data-series")["λ_s, layer alone"]
    means = [summary["entries"][name]["lambda_s"][name]["mean"] for name in CHOSEN]
    assert alone == pytest.approx(means) and all(0 < m < 1 for m in means)  # a point each
    assert chart(page, "#chart-accuracy", "data-x-ticks") == CHOSEN
    rows = page.locator("#study-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.cells[0].textContent)")
    assert rows == CHOSEN
    shots = Path(os.environ.get("QUANTA_SCREENSHOTS") or server.root)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=shots / "study-own-network.png", full_page=True)

    # 3. A child's page: its λ_s curve is labelled with its layer's name.
    page.click("#study-grid .cell[data-entry='bn2'][data-run='0']")
    page.wait_for_url(re.compile(r"#/job/[0-9a-f]+$"))
    page.wait_for_selector(".chart-lambda .chart[data-series]")
    page.wait_for_selector("#final-quantas")
    curve = chart(page, ".chart-lambda", "data-series")
    assert list(curve) == ["layer bn2"] and None not in curve["layer bn2"]  # start + 2 epochs
    assert len(curve["layer bn2"]) == 3
    assert "layer bn2" in page.inner_text(".chart-lambda .u-legend")
    assert "λ_s layer bn2" in page.text_content("#final-quantas thead")

    # 4. The transfer form: the uploaded network picked from the uploads, its layers in a select.
    page.goto(f"{base}/#/submit/transfer")
    page.wait_for_selector("#form-transfer")
    page.wait_for_selector(f"#f-source_model-uploads option[value='{upload}']", state="attached")
    page.select_option("#f-source_model", "upload")
    page.fill("#f-source_model-upload", upload)
    page.dispatch_event("#f-source_model-upload", "change")
    page.wait_for_selector("#f-layer_to_transfer-name option[value='drop']", state="attached")
    options = page.locator("#f-layer_to_transfer-name option").evaluate_all(
        "options => options.map(o => o.value)")
    assert options == ["", *TRANSFERABLE, "-1"]
    page.select_option("#f-layer_to_transfer-name", "add")
    assert spec_preview(page)["layer_to_transfer"] == "add"
    page.select_option("#f-layer_to_transfer-name", "-1")
    assert spec_preview(page)["layer_to_transfer"] == -1
    # keras.applications.NAME: typed, and so is the layer.
    page.select_option("#f-source_model", "name")
    page.fill("#f-source_model-name", "keras.applications.MobileNetV3Small")
    page.dispatch_event("#f-source_model-name", "change")
    page.wait_for_selector("#f-layer_to_transfer-text", state="visible")
    page.fill("#f-layer_to_transfer-text", "expanded_conv_project_bn")
    spec = spec_preview(page)
    assert spec["source_model"] == "keras.applications.MobileNetV3Small"
    assert spec["layer_to_transfer"] == "expanded_conv_project_bn"
