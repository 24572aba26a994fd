"""`quanta-worker`: one Celery worker process that runs QUANTA jobs one at a time.

    quanta-worker [--gpu N] [--name NAME] [--loglevel INFO]
    quanta-worker [--gpu N] [--name NAME] --check     # exit 0 while this worker beats

The pool is `solo` with concurrency 1: TensorFlow is not fork-safe, and one job at a
time keeps a GPU's memory for that job. Run one worker per GPU (`--gpu N` sets
CUDA_VISIBLE_DEVICES before TensorFlow loads), or several on one GPU when jobs are
small (`quanta-serve --workers 4 --gpus 0,1` puts two on each), each capped with
`--gpu-memory-mb` (or `QUANTA_GPU_MEMORY_MB`) so that they fit side by side. Names
(`--name`, else `QUANTA_WORKER_NAME`) must be unique: a worker that restarts under the
same name takes back at once the jobs it was running when it died.

`--check` is the worker's liveness probe (a container's healthcheck): it answers from the
worker's own heartbeat row in the database (`quanta_jobs.workers`), which a thread of
the worker stamps whether or not a job is training, so a busy worker stays healthy; a
broker round trip (`celery inspect ping`) goes unanswered by the solo pool while a job
runs. It resolves the name exactly as the worker does, from the same options and
environment, and never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from typing import Any

from quanta_jobs.workers import ALIVE_BEATS, WorkerHeartbeat


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quanta-worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", help="GPU id for this worker (sets CUDA_VISIBLE_DEVICES); "
                        "'' or 'none' hides every GPU")
    parser.add_argument("--name", help="node name, NAME or NAME@HOST (default: "
                        "QUANTA_WORKER_NAME, else gpuN with --gpu, else worker-PID)")
    parser.add_argument("--gpu-memory-mb", type=int,
                        default=int(os.environ.get("QUANTA_GPU_MEMORY_MB") or 0),
                        help="cap on this worker's GPU memory, to run several workers per "
                        "GPU (default: no cap, memory grows as needed)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--no-preload", action="store_true",
                        help="import TensorFlow at the first job instead of at start")
    parser.add_argument("--check", action="store_true",
                        help="exit 0 if this worker's heartbeat is fresh in the database, "
                        "else 1 saying why (a healthcheck; starts nothing)")
    return parser.parse_args(argv)


def configure_tensorflow(memory_mb: int = 0) -> None:
    """Let TensorFlow grow GPU memory as needed instead of taking it all at once, or cap
    it at `memory_mb` so that several workers share a GPU."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if memory_mb > 0:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mb)]
                )
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # already initialised
            logging.getLogger(__name__).warning("memory growth not set on %s: %s", gpu, exc)
    import quanta.source_training
    import quanta.transfer  # noqa: F401


def worker_name(name: str | None, gpu: str | None, configured: str = "") -> str:
    """The worker's node name, `NAME@HOST`: `--name`, else QUANTA_WORKER_NAME, else gpuN
    (with a GPU) or worker-PID, with this machine's host name after the @ when missing.
    The worker and its `--check` both call this, so the probe names the worker that runs."""
    name = name or configured or (f"gpu{gpu}" if gpu not in (None, "", "none")
                                  else f"worker-{os.getpid()}")
    return name if "@" in name else f"{name}@{socket.gethostname()}"


def check(name: str) -> int:
    """The liveness probe: 0 when `name`'s heartbeat row was stamped within
    `ALIVE_BEATS` heartbeats (by the database's clock), else 1; one line either way."""
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.settings import get_settings
    from quanta_jobs.workers import last_seen

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            age = last_seen(session, name)
    except Exception as exc:  # the database is down: not this worker's fault, but not alive
        print(f"quanta-worker --check: {name}: database unreachable "
              f"({type(exc).__name__})", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    bound = ALIVE_BEATS * settings.heartbeat_s
    if age is None:
        print(f"quanta-worker --check: {name}: no heartbeat (not started, or stopped)",
              file=sys.stderr)
        return 1
    if age > bound:
        print(f"quanta-worker --check: {name}: last heartbeat {age:.0f} s ago (more than "
              f"{bound:g} s)", file=sys.stderr)
        return 1
    print(f"{name}: alive (heartbeat {age:.1f} s ago)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        from quanta_jobs.settings import get_settings

        return check(worker_name(args.name, args.gpu, get_settings().worker_name))
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if args.gpu.lower() == "none" else args.gpu
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=args.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    if not args.no_preload:
        configure_tensorflow(args.gpu_memory_mb)
    from quanta_jobs.queue import broadcasts
    from quanta_jobs.settings import get_settings
    from worker.tasks import app

    name = worker_name(args.name, args.gpu, get_settings().worker_name)
    heartbeat = _heartbeat(name)  # /readyz and --check read these rows
    _reclaim_in_background(name, app)
    # Celery's own heartbeat (what Flower's "Online" reads) where the broker broadcasts
    # it; the service's liveness is its own row (`_heartbeat`) either way.
    celery_heartbeat = [] if broadcasts(get_settings()) else ["--without-heartbeat"]
    try:
        app.worker_main(argv=[
            "worker", "--pool=solo", "--concurrency=1", f"--hostname={name}",
            f"--loglevel={args.loglevel}", "--without-gossip", "--without-mingle",
            *celery_heartbeat, "-Q", app.conf.task_default_queue,
        ])
    finally:
        heartbeat.stop()
    return 0


def _heartbeat(name: str) -> WorkerHeartbeat:
    from quanta_jobs import attempts
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.settings import get_settings

    settings = get_settings()
    sessions = make_sessionmaker(make_engine(settings.database_url))
    try:  # what killed workers of this host left in its cache of the bucket
        with sessions() as session:
            dropped = attempts.drop_ended_work(session, settings)
        if dropped:
            logging.getLogger(__name__).info("dropped the work folders of %d ended jobs",
                                             dropped)
    except Exception:
        logging.getLogger(__name__).warning("work folders not checked", exc_info=True)
    return WorkerHeartbeat(sessions, name, settings.heartbeat_s).start()


def _reclaim_in_background(name: str, celery: Any) -> None:
    """Take back, as soon as it is safe, the jobs this worker's name was running when it
    died (`quanta_jobs.recovery.reclaim_own`), instead of leaving them to the sweeper's
    `QUANTA_STALE_AFTER_S`; in a thread, so that the worker takes messages meanwhile."""
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.recovery import reclaim_own
    from quanta_jobs.settings import get_settings

    def run() -> None:
        settings = get_settings()
        engine = make_engine(settings.database_url)
        try:
            reclaim_own(make_sessionmaker(engine), celery, settings, name)
        except Exception:  # the sweeper takes them over at QUANTA_STALE_AFTER_S anyway
            logging.getLogger(__name__).warning("%s: could not take back its jobs", name,
                                                exc_info=True)
        finally:
            engine.dispose()

    threading.Thread(target=run, name="reclaim-own-jobs", daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
