"""Dashboard load and update latency with 1,000 jobs and a 7 x 30 study (210 children).

Rows are written straight into a SQLite database with the job core's own functions
(no worker, no training): 1,000 jobs, then a study of layers 0-6 x 30 runs whose first
half of children succeeded with results. A real `quanta-serve --workers 0` serves it,
and Debian's headless Chromium (Playwright) measures, in the page's own clock:

- jobs page: navigation start to the first page of 50 rows drawn;
- study page: navigation start to the 210-cell grid and the curve drawn;
- study update: a child's status committed (with its event, as a worker does) to its
  cell changing colour in the open page (clocks of the same machine);
- jobs table update: a job's status committed to its row changing (the table polls).

    .venv/bin/python bench/dashboard_load.py [--repeat 5] [--updates 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
SOURCE = {"source_task": "digits", "nb_of_epochs": 2, "width_multiplier": 0.0625, "seed": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_result(layer: int, run: int) -> dict[str, Any]:
    lam = 0.9 - 0.1 * layer + 0.01 * (run % 5)
    accuracy = 0.5 + 0.02 * layer + 0.001 * run
    return {"experiment_dir": "digits_to_digits", "runs": [{
        "run": 0, "quantas": {str(layer): {"source": lam, "target": 1 - lam}},
        "target_metrics": {"categorical_accuracy": accuracy, "loss": 1.0},
        "source_metrics": {"categorical_accuracy": 0.9},
        "witness_metrics": {"categorical_accuracy": accuracy - 0.05}, "transfer_gain": 0.05}]}


def populate(database_url: str, jobs: int) -> tuple[str, list[str]]:
    """`jobs` jobs, then a 7 x 30 study half done: (study id, its queued children)."""
    from quanta_jobs import crud, job_events, studies
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.migrate import upgrade

    upgrade(database_url)
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        source = crud.create_job(session, "source", SOURCE)
        session.commit()
        transition(session, source, JobStatus.RUNNING, worker="bench@host")
        transition(session, source, JobStatus.SUCCEEDED, result={"test_metrics": {}})
        session.commit()
        for index in range(jobs - 1):
            job = crud.create_job(session, "transfer", {
                "source_task": "digits", "target_task": "digits", "layer_to_transfer": index % 7,
                "source_weights": {"job": source.id}, "nb_of_runs": 1, "nb_of_target_epochs": 3,
                "width_multiplier": 0.0625})
            if index % 3 == 0:
                transition(session, job, JobStatus.RUNNING, worker="bench@host",
                           progress={"run": 0, "nb_of_runs": 1, "epoch": 1, "nb_of_epochs": 3,
                                     "fraction": 0.33, "metrics": {}, "quantas": {}})
        session.commit()
        study = crud.create_job(session, "study", {
            "source_task": "digits", "target_task": "digits", "source_weights": {"job": source.id},
            "layers": "all", "nb_of_runs": 30, "nb_of_target_epochs": 3, "witness": True,
            "width_multiplier": 0.0625, "seed": 42})
        children = studies.add_children(session, study)
        session.commit()
        transition(session, study, JobStatus.RUNNING, worker="bench@host")
        session.commit()
        queued = []
        for child in children:
            layer = int(child.spec["layer_to_transfer"])
            run = int(child.study_run or 0)
            if run < 15:
                transition(session, child, JobStatus.RUNNING, worker="bench@host")
                transition(session, child, JobStatus.SUCCEEDED, result=child_result(layer, run))
            else:
                queued.append(child.id)
        session.commit()
        job_events.record_status(session, study)
    engine.dispose()
    return study.id, queued


def finish_child(database_url: str, child_id: str) -> float:
    """Run and succeed one child as a worker would (status, then its event); returns the
    wall-clock time at which the final status was committed."""
    from quanta_jobs import job_events
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        child = session.get(Job, child_id)
        layer = int(child.spec["layer_to_transfer"])
        transition(session, child, JobStatus.RUNNING, worker="bench@host")
        session.commit()
        transition(session, child, JobStatus.SUCCEEDED,
                   result=child_result(layer, int(child.study_run or 0)))
        session.commit()
        committed = time.time()
        job_events.record_status(session, child)
    engine.dispose()
    return committed


def set_running(database_url: str, job_id: str) -> float:
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.job_state import JobStatus, transition
    from quanta_jobs.models import Job

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        job = session.get(Job, job_id)
        transition(session, job, JobStatus.RUNNING, worker="bench@host")
        session.commit()
        committed = time.time()
    engine.dispose()
    return committed


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max_ms": round(ordered[-1], 1), "n": len(ordered)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dashboard.json")
    parser.add_argument("--screenshots", type=Path, help="save the pages seen here (PNG)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO))
    tmp = Path(tempfile.mkdtemp(prefix="quanta-dashboard-bench-"))
    database_url = f"sqlite:///{tmp / 'quanta.db'}"
    began = time.monotonic()
    study, queued = populate(database_url, args.jobs)
    print(f"populated {args.jobs} jobs and a 7 x 30 study in {time.monotonic() - began:.1f} s")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")}
    env.update(PYTHONPATH=str(REPO), QUANTA_DATABASE_URL=database_url,
               QUANTA_BROKER_URL=f"sqla+sqlite:///{tmp / 'broker.db'}",
               QUANTA_ARTIFACTS_DIR=str(tmp / "artifacts"), QUANTA_REQUEUE_INTERVAL_S="0")
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "api.serve", "--port", str(port),
                               "--workers", "0"], env=env, cwd=tmp, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"jobs": args.jobs, "study_children": 210}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
            if time.monotonic() > deadline:
                raise SystemExit("quanta-serve did not start")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 headless=True, args=BROWSER_ARGS)
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.set_default_timeout(60_000)
            jobs_ms, study_ms = [], []
            for _ in range(args.repeat):
                page.goto(f"{base}/#/jobs")
                page.wait_for_function(
                    "() => document.querySelectorAll('#jobs-table tr[data-job]').length == 50")
                jobs_ms.append(page.evaluate("performance.now()"))
                page.goto("about:blank")
                page.goto(f"{base}/#/study/{study}")
                page.wait_for_function(
                    "() => document.querySelectorAll('#study-grid .cell[data-job]').length == 210"
                    " && document.querySelector('#chart-transferability .u-over')")
                study_ms.append(page.evaluate("performance.now()"))
                page.goto("about:blank")
            results["jobs_page_load"] = summary(jobs_ms)
            results["study_page_load"] = summary(study_ms)

            page.goto(f"{base}/#/study/{study}")
            page.wait_for_function(
                "() => document.querySelectorAll('#study-grid .cell[data-job]').length == 210")
            time.sleep(2)  # the event stream is open and has replayed the study's history
            study_updates = []
            for child in queued[: args.updates]:
                page.evaluate("""id => { window.__changed = null;
                    const cell = document.querySelector(`.cell[data-job="${id}"]`);
                    new MutationObserver((m, o) => { if (cell.dataset.status === 'succeeded') {
                      window.__changed = Date.now(); o.disconnect(); } })
                      .observe(cell, {attributes: true}); }""", child)
                committed = finish_child(database_url, child)
                page.wait_for_function("() => window.__changed !== null")
                study_updates.append(page.evaluate("window.__changed") - committed * 1000)
            results["study_update_latency"] = summary(study_updates)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.screenshots / "study-210.png", full_page=True)

            page.goto(f"{base}/#/jobs")
            page.wait_for_function(
                "() => document.querySelectorAll('#jobs-table tr[data-job]').length == 50")
            shown = page.evaluate("[...document.querySelectorAll('#jobs-table tr[data-job]')]"
                                  ".map(r => [r.dataset.job, r.dataset.status])")
            table_updates = []
            for job_id in [j for j, s in shown if s == "queued"][: max(3, args.updates // 3)]:
                committed = set_running(database_url, job_id)
                page.wait_for_function(
                    f"() => document.querySelector('tr[data-job=\"{job_id}\"]')"
                    "?.dataset.status === 'running'")
                table_updates.append(page.evaluate("Date.now()") - committed * 1000)
            results["jobs_table_update_latency"] = summary(table_updates)
            if args.screenshots:
                page.screenshot(path=args.screenshots / "jobs-1000.png", full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
