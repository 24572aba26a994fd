"""API latency under a fixed load, and the API process's memory and start-up time.

    .venv/bin/python bench/api_latency.py [--rate 200] [--list_rate 100 200] [--seconds 20] \
        [--database URL]

Starts the API alone (`quanta-serve --workers 0`) on a temporary SQLite database (or
`--database`, e.g. PostgreSQL), fills it with `--jobs` queued jobs, then a second
process sends an open-loop load: requests start at a fixed rate whatever the answers
take, so a slow server shows up as latency, not as a lower rate. Reports p50, p95 and
p99 per endpoint, errors, the API's resident memory (now and peak) and its start-up
time (process start to the first `200` from `/healthz`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load(base: str, paths: list[str], rate: float, seconds: float,
         threads: int = 32) -> dict:
    """Open-loop load: request i is due at i/rate seconds, on a random path of `paths`.

    Threads with keep-alive connections (`http.client`) send the requests; each waits
    for its request's due time. Latency counts from the due time, not from the send, so
    a server that falls behind (every thread busy, requests sent late) shows up as
    latency rather than as a lower rate. Sending costs about 0.1 ms of CPU per request.
    """
    url = urlsplit(base)
    total = int(rate * seconds)
    due = queue.SimpleQueue()
    for i in range(total):
        due.put((i, random.choice(paths)))
    latencies: list[float] = []
    errors: list[int] = []
    t0 = time.perf_counter() + 0.2

    def sender() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        while True:
            try:
                i, path = due.get_nowait()
            except queue.Empty:
                conn.close()
                return
            at = t0 + i / rate
            if (delay := at - time.perf_counter()) > 0:
                time.sleep(delay)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    errors.append(response.status)
            except (OSError, http.client.HTTPException):
                errors.append(0)
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            latencies.append((time.perf_counter() - at) * 1000)  # list.append is atomic

    pool = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "achieved_rate": round(len(latencies) / elapsed),
        **{f"p{q}_ms": round(percentile(latencies, q), 2) for q in (50, 95, 99)},
        "max_ms": round(max(latencies), 2),
    }


def run_load_process(base: str, paths: list[str], rate: float, seconds: float) -> dict:
    """The load runs in its own process so that it does not share the API's CPU time slice."""
    job = json.dumps({"base": base, "paths": paths, "rate": rate, "seconds": seconds})
    done = subprocess.run([sys.executable, __file__, "--load", job], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--list_rate", type=float, nargs="+", default=[100, 200],
                        help="rates for GET /v1/jobs (a page of 50 costs more than one job)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs in the database")
    parser.add_argument("--database", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the load process's own entry
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load(**json.loads(args.load))))
        return

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")} | {
            "QUANTA_DATABASE_URL": args.database or f"sqlite:///{tmp / 'q.db'}",
            "QUANTA_BROKER_URL": f"sqla+sqlite:///{tmp / 'b.db'}",
            "QUANTA_ARTIFACTS_DIR": str(tmp / "artifacts"),
            "QUANTA_REQUEUE_INTERVAL_S": "0",
            "QUANTA_MAX_QUEUED_PER_OWNER": "0",  # the fill-up below queues them all
        }
        start = time.perf_counter()
        api = subprocess.Popen(
            [sys.executable, "-m", "api.serve", "--workers", "0", "--port", str(port)],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if api.poll() is not None:
                    raise SystemExit("the API did not start")
                time.sleep(0.02)
            startup = time.perf_counter() - start
            # The API process is `quanta-serve`'s child when it runs uvicorn in-process or not:
            pids = [api.pid] + [int(p) for p in subprocess.run(
                ["pgrep", "-P", str(api.pid)], capture_output=True, text=True).stdout.split()]
            spec = {"source_task": "digits", "nb_of_epochs": 1, "width_multiplier": 0.0625}
            with httpx.Client(base_url=base, timeout=30) as client:
                ids = [client.post("/v1/jobs", json={"kind": "source", "spec": spec})
                       .raise_for_status().json()["id"] for _ in range(args.jobs)]
            results = {
                "GET /v1/jobs/{id}": run_load_process(base, [f"/v1/jobs/{i}" for i in ids],
                                                      args.rate, args.seconds),
            }
            for rate in args.list_rate:
                results[f"GET /v1/jobs at {rate:g}/s"] = run_load_process(
                    base, ["/v1/jobs", "/v1/jobs?status=queued", "/v1/jobs?kind=source&limit=20"],
                    rate, args.seconds)
            memory = {str(pid): memory_kib(pid) for pid in pids}
        finally:
            api.send_signal(signal.SIGINT)
            try:
                api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                api.kill()
    report = {"startup_s": round(startup, 2), "memory_kib": memory, "rate": args.rate,
              "list_rate": args.list_rate,
              "seconds": args.seconds, "jobs_in_db": args.jobs, "results": results}
    print(f"API start-up: {report['startup_s']} s; memory (KiB): {memory}")
    print("| endpoint | requests | errors | rate/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['requests']} | {r['errors']} | {r['achieved_rate']} | {r['p50_ms']} "
              f"| {r['p95_ms']} | {r['p99_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
