"""One worker per GPU under Docker Compose: write the services a host with several GPUs
needs, copied from `docker-compose.yml`'s own `worker` (the worker of GPU 0).

    python3 deploy/compose_gpus.py --gpus 4 [--per-gpu 1] > docker-compose.gpus.yml
    echo 'COMPOSE_FILE=docker-compose.yml:docker-compose.gpus.yml' >> .env
    docker compose up -d

`--gpus` defaults to QUANTA_GPUS, `--per-gpu` to QUANTA_WORKERS_PER_GPU (several workers
sharing a GPU, each capped with QUANTA_GPU_MEMORY_MB). Each service `worker-gpuG` (and
`worker-gpuG-K` for the K-th worker of GPU G) is the base `worker` with its GPU reserved
(`device_ids: ["G"]`, seen inside as device 0, so it sees only its own) and its name,
`gpuG@HOST` / `gpuG-K@HOST` in QUANTA_WORKER_NAME, which the worker and its healthcheck
both read: stable per GPU slot, so a recreated container is the same worker. Run it again
after changing `docker-compose.yml`'s worker: the copies are made from it.

The compose file is read with PyYAML when it is installed, else with Compose v2 itself
(`docker compose config --no-interpolate`), so the host needs nothing but Python 3 and
Docker. The output is JSON, which Compose reads as YAML.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

BASE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
#: The base worker's name, which each copy replaces with its own slot's.
BASE_SLOT = "gpu0"


def load_compose(path: Path) -> dict[str, Any]:
    """`path` as data, its `${...}` left for Compose to fill in when it runs the result."""
    try:
        import yaml
    except ImportError:
        done = subprocess.run(["docker", "compose", "-f", str(path), "config", "--format",
                               "json", "--no-interpolate"], capture_output=True, text=True,
                              check=True)
        return dict(json.loads(done.stdout))
    return dict(yaml.safe_load(path.read_text()))


def slots(gpus: int, per_gpu: int) -> list[tuple[str, int, str]]:
    """(service, GPU, slot name) of every worker; GPU 0's first is the base `worker`."""
    out = []
    for gpu in range(gpus):
        for k in range(1, per_gpu + 1):
            slot = f"gpu{gpu}" if k == 1 else f"gpu{gpu}-{k}"
            out.append(("worker" if slot == BASE_SLOT else f"worker-{slot}", gpu, slot))
    return out


def worker_for(base: dict[str, Any], gpu: int, slot: str) -> dict[str, Any]:
    """The base worker service, for GPU `gpu` under the name `slot`."""
    service = copy.deepcopy(base)
    env = service["environment"]
    name = str(env["QUANTA_WORKER_NAME"])
    if not name.startswith(BASE_SLOT + "@"):
        raise SystemExit(f"compose_gpus: the base worker's QUANTA_WORKER_NAME ({name}) does "
                         f"not start with {BASE_SLOT}@")
    env["QUANTA_WORKER_NAME"] = slot + name[len(BASE_SLOT):]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    for device in devices:
        device["device_ids"] = [str(gpu)]
    return service


def override(compose: dict[str, Any], gpus: int, per_gpu: int) -> dict[str, Any]:
    """The override file: every worker but the base one."""
    base = compose["services"]["worker"]
    return {"services": {service: worker_for(base, gpu, slot)
                         for service, gpu, slot in slots(gpus, per_gpu)
                         if service != "worker"}}


def _count(value: str, what: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,2}", value.strip()):
        raise argparse.ArgumentTypeError(f"{what} must be a whole number from 1, not {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose_gpus.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=lambda v: _count(v, "--gpus"),
                        default=os.environ.get("QUANTA_GPUS") or "1",
                        help="GPUs of this host, numbered from 0 (default: QUANTA_GPUS, else 1)")
    parser.add_argument("--per-gpu", type=lambda v: _count(v, "--per-gpu"),
                        default=os.environ.get("QUANTA_WORKERS_PER_GPU") or "1",
                        help="workers per GPU (default: QUANTA_WORKERS_PER_GPU, else 1)")
    parser.add_argument("--compose-file", type=Path, default=BASE)
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    gpus = args.gpus if isinstance(args.gpus, int) else _count(args.gpus, "QUANTA_GPUS")
    per_gpu = (args.per_gpu if isinstance(args.per_gpu, int)
               else _count(args.per_gpu, "QUANTA_WORKERS_PER_GPU"))
    text = "# Written by deploy/compose_gpus.py: one worker per GPU slot (see its --help).\n"
    text += json.dumps(override(load_compose(args.compose_file), gpus, per_gpu), indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
