"""`quanta-worker`: one Celery worker process that runs QUANTA jobs one at a time.

    quanta-worker [--gpu N] [--name NAME] [--loglevel INFO]

The pool is `solo` with concurrency 1: TensorFlow is not fork-safe, and one job at a
time keeps a GPU's memory for that job. Run one worker per GPU (`--gpu N` sets
CUDA_VISIBLE_DEVICES before TensorFlow loads), or several on one GPU when jobs are
small (`quanta-serve --workers 4 --gpus 0,1` puts two on each), each capped with
`--gpu-memory-mb` (or `QUANTA_GPU_MEMORY_MB`) so that they fit side by side. Names
must be unique per host: a worker that restarts under the same name takes back the
job it was running.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

from quanta_jobs.workers import WorkerHeartbeat


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quanta-worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", help="GPU id for this worker (sets CUDA_VISIBLE_DEVICES); "
                        "'' or 'none' hides every GPU")
    parser.add_argument("--name", help="node name (default: gpuN with --gpu, else worker-PID)")
    parser.add_argument("--gpu-memory-mb", type=int,
                        default=int(os.environ.get("QUANTA_GPU_MEMORY_MB") or 0),
                        help="cap on this worker's GPU memory, to run several workers per "
                        "GPU (default: no cap, memory grows as needed)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--no-preload", action="store_true",
                        help="import TensorFlow at the first job instead of at start")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if args.gpu.lower() == "none" else args.gpu
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=args.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    if not args.no_preload:
        configure_tensorflow(args.gpu_memory_mb)
    from worker.tasks import app

    name = args.name or (f"gpu{args.gpu}" if args.gpu not in (None, "", "none")
                         else f"worker-{os.getpid()}")
    if "@" not in name:
        name = f"{name}@{socket.gethostname()}"
    heartbeat = _heartbeat(name)  # /readyz counts the workers alive from these rows
    try:
        app.worker_main(argv=[
            "worker", "--pool=solo", "--concurrency=1", f"--hostname={name}",
            f"--loglevel={args.loglevel}", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-Q", app.conf.task_default_queue,
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


if __name__ == "__main__":
    raise SystemExit(main())
