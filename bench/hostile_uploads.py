"""What uploads that are cheap to send and dear to check cost a real `quanta-serve` API:
CPU-seconds, bytes written to disk and memory of the API process, and the latency of
`/healthz` meanwhile.

    .venv/bin/python bench/hostile_uploads.py [--repo CHECKOUT] [--groups 300000] \
        [--json out.json]

Two cases: four `.keras` uploads at once, each a 1 MB zip whose `model.weights.h5`
inflates to 1000 MiB; one HDF5 weights file of `--groups` empty groups. `--repo` serves
another checkout of the project (an earlier commit, to compare before and after a change)
with this machine's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
CONFIG = b'{"class_name": "Sequential", "config": {"name": "s", "layers": []}}'


def keras_bomb(path: Path, mib: int = 1000) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", CONFIG)
        archive.writestr("metadata.json", b'{"keras_version": "3.15.1"}')
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            zeros = b"\0" * 2**20
            for _ in range(mib):
                member.write(zeros)
    return path


def many_groups(path: Path, groups: int) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for i in range(groups):
            f.create_group(f"g{i}")
    return path


def proc(pid: int) -> dict[str, float]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return {"cpu_s": (int(stat[11]) + int(stat[12])) / TICKS,
            "written_mib": int(io["write_bytes"]) / 2**20, "rss_mib": rss / 1024}


def during(url: str, action: Callable[[], list[int]]) -> tuple[list[int], list[float]]:
    """`action()`'s status codes, and /healthz latencies (ms) measured while it ran."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while not done.is_set():
                start = time.perf_counter()
                client.get(f"{url}/healthz")
                latencies.append((time.perf_counter() - start) * 1000)
                done.wait(0.05)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        codes = action()
    finally:
        done.set()
        thread.join()
    return codes, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--groups", type=int, default=300_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        bomb = keras_bomb(root / "bomb.keras")
        h5 = many_groups(root / "groups.weights.h5", args.groups)
        print(f"files: {bomb.stat().st_size / 2**20:.1f} MiB .keras (1000 MiB inflated), "
              f"{h5.stat().st_size / 2**20:.1f} MiB HDF5 of {args.groups} groups")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTA_")}
        env.update(PYTHONPATH=str(args.repo.resolve()), QUANTA_ARTIFACTS_DIR=str(root / "a"),
                   QUANTA_DATABASE_URL=f"sqlite:///{root}/q.db",
                   QUANTA_BROKER_URL=f"sqla+sqlite:///{root}/b.db")
        serve = subprocess.Popen([sys.executable, "-m", "api.serve", "--port", str(port),
                                  "--workers", "0"], env=env, cwd=root,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        results: dict[str, dict[str, object]] = {}
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)

            def send(path: Path) -> int:
                with httpx.Client(timeout=600) as client:
                    return client.post(f"{url}/v1/uploads",
                                       files={"file": (path.name, path.read_bytes())}).status_code

            cases = {"4 .keras bombs at once": lambda: list(
                         ThreadPoolExecutor(4).map(send, [bomb] * 4)),
                     f"HDF5 of {args.groups} groups": lambda: [send(h5)]}
            for name, action in cases.items():
                before = proc(serve.pid)
                codes, latencies = during(url, action)
                after = proc(serve.pid)
                results[name] = {
                    "codes": codes,
                    **{k: round(after[k] - before[k], 2) for k in before},
                    "healthz_median_ms": round(statistics.median(latencies), 1),
                    "healthz_max_ms": round(max(latencies), 1),
                }
                print(f"{name}: {results[name]}")
        finally:
            serve.terminate()
            serve.wait(60)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
