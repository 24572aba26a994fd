"""`quanta-serve`: migrate the database, then run the API and N worker processes.

    quanta-serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--gpus 0,1]
    quanta-serve migrate [REVISION]
    quanta-serve token create NAME [--admin] | token revoke NAME|ID | token list

Without any API token (QUANTA_API_TOKENS or `token create`) the API is open, so it
then serves only on a loopback address: `--host 0.0.0.0` without a token exits with 2.

Workers are separate processes (`python -m worker.main`), because TensorFlow must
not live in the API process; Ctrl-C or SIGTERM stops the API, then asks each worker
to stop (a running job is handed back to the queue at its next batch), and kills
those that do not exit in time. A worker that dies meanwhile (killed by the kernel
for memory, a crash) is restarted under its name, after a back-off that doubles while
it keeps dying quickly (`Supervisor`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from api.origin_guard import WILDCARD_BINDS
from quanta_jobs.migrate import UnsupportedDatabase, upgrade
from quanta_jobs.settings import Settings, get_settings

log = logging.getLogger("quanta.serve")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: Exit status when the configuration is unsafe or invalid (as argparse's usage errors).
EXIT_CONFIG = 2


def check_auth(settings: Settings, host: str) -> str | None:
    """None if serving on `host` is safe, else why not. Logs whether tokens are required."""
    from quanta_jobs.db import make_engine, make_sessionmaker
    from quanta_jobs.tokens import tokens_configured

    try:
        engine = make_engine(settings.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                configured = tokens_configured(settings, session)
        finally:
            engine.dispose()
    except ValueError as exc:  # a malformed QUANTA_API_TOKENS
        return str(exc)
    if configured:
        log.info("authentication on: every /v1 request needs an API token")
        return None
    if host not in LOOPBACK_HOSTS:
        return (f"refusing to serve on {host} without API tokens: anyone who can reach it "
                "could run jobs. Set QUANTA_API_TOKENS=name:token[,...] or run "
                "`quanta-serve token create NAME`, or serve on 127.0.0.1")
    log.warning("no API tokens configured: the API is open to anyone on this machine "
                "(%s only); set QUANTA_API_TOKENS or `quanta-serve token create NAME` "
                "before serving on another address", host)
    return None


#: Environment variables a worker never needs: the API's tokens (a job's code, or a file
#: it was tricked into reading, cannot hand them out if the process does not hold them).
WORKER_HIDDEN_ENV = ("QUANTA_API_TOKENS",)


def worker_env() -> dict[str, str]:
    """The workers' environment: the API's, without what only the API needs."""
    return {k: v for k, v in os.environ.items() if k not in WORKER_HIDDEN_ENV}


def worker_command(index: int, gpus: list[str], log_level: str) -> list[str]:
    command = [sys.executable, "-m", "worker.main", "--name", f"worker{index}",
               "--loglevel", log_level]
    if gpus:
        command += ["--gpu", gpus[index % len(gpus)]]
    return command


#: prctl(2)'s option that sends the child a signal when its parent dies (Linux).
PR_SET_PDEATHSIG = 1
try:  # looked up here: the child, between fork and exec, only calls it (no import, no lock)
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the supervisor's own stop still applies
    _prctl = None


def _die_with_parent() -> None:
    """Run in each worker's process before it starts: SIGTERM as soon as quanta-serve dies,
    however it dies (`kill -9` too). An orphaned worker would go on taking jobs beside the
    restarted service's workers of the same name; with SIGTERM it hands its job back."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_worker(index: int, gpus: list[str], log_level: str) -> subprocess.Popen[bytes]:
    """Worker `index`, which dies with this process (`_die_with_parent`)."""
    return subprocess.Popen(worker_command(index, gpus, log_level), env=worker_env(),
                            preexec_fn=_die_with_parent)


def start_workers(count: int, gpus: list[str], log_level: str) -> list[subprocess.Popen[bytes]]:
    """Start `count` workers; worker i gets GPU `gpus[i % len(gpus)]` when GPUs are given."""
    processes = []
    for index in range(count):
        processes.append(spawn_worker(index, gpus, log_level))
        log.info("started worker%d (pid %d)", index, processes[-1].pid)
    return processes


#: A worker that ran this long before dying was healthy: its restart waits `BACKOFF_S`.
HEALTHY_S = 60.0
#: First wait before restarting a dead worker, doubled for each quick death in a row.
BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class Supervisor:
    """Restarts the workers that die while the service runs (the kernel's out-of-memory
    killer, a crash), with a back-off when they keep dying; a worker that exits with
    status 0 stopped on purpose and is left alone. `processes` is updated in place."""

    def __init__(self, processes: list[subprocess.Popen[bytes]], gpus: list[str],
                 log_level: str, stopping: Callable[[], bool], poll_s: float = 0.5) -> None:
        self.processes, self.gpus, self.log_level = processes, gpus, log_level
        self.stopping, self.poll_s = stopping, poll_s
        now = time.monotonic()
        self._started = [now] * len(processes)
        self._quick_deaths = [0] * len(processes)
        self._restart_at: list[float | None] = [None] * len(processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.stopping():
                return
            for index, process in enumerate(self.processes):
                code = process.poll()
                if code is None or code == 0:
                    continue
                self._restart(index, code)

    def _restart(self, index: int, code: int) -> None:
        now = time.monotonic()
        when = self._restart_at[index]
        if when is None:  # just found dead
            lived = now - self._started[index]
            self._quick_deaths[index] = 0 if lived >= HEALTHY_S else (
                self._quick_deaths[index] + 1)
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** self._quick_deaths[index])
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            log.warning("worker%d (pid %d) %s after %.0f s; restarting it in %.0f s",
                        index, self.processes[index].pid, how, lived, delay)
            self._restart_at[index] = now + delay
            return
        if now < when or self.stopping():
            return
        process = spawn_worker(index, self.gpus, self.log_level)
        self.processes[index] = process
        self._started[index], self._restart_at[index] = now, None
        log.warning("restarted worker%d (pid %d)", index, process.pid)


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each process, wait up to `timeout` seconds in all, then SIGKILL the rest."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop in %.0fs; killing it", process.pid, timeout)
            process.kill()
            process.wait()


def where(host: str, port: int) -> str:
    """The lines `quanta-serve` prints once it listens: where people go first."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if host in ("0.0.0.0", "::", "[::]"):
        shown = "HOST"
    base = f"http://{shown}:{port}"
    return (f"QUANTA job service listening on {base}\n"
            f"  API documentation: {base}/docs   (OpenAPI schema: {base}/openapi.json)\n"
            f"  dashboard:         {base}/")


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server that says where the docs and the dashboard are once it listens."""

        def __init__(self, config: uvicorn.Config, workers: int) -> None:
            super().__init__(config)
            self.workers = workers

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                started = (f"  workers: {self.workers} (jobs wait in the queue until one is "
                           "ready)" if self.workers else "  workers: none in this process "
                           "(start them with quanta-worker)")
                print(f"{where(self.config.host, self.config.port)}\n{started}", flush=True)

    return Server


def serve_settings(settings: Settings, workers: int, host: str = "127.0.0.1") -> Settings:
    """The API's settings when quanta-serve starts `workers` itself and listens on `host`:
    /readyz is not ready until one of the workers can take a job, and the API answers to
    the loopback names and `host` (any name on every interface, where tokens are required),
    unless QUANTA_READY_MIN_WORKERS and QUANTA_ALLOWED_HOSTS say otherwise."""
    update: dict[str, Any] = {}
    if workers and "QUANTA_READY_MIN_WORKERS" not in os.environ:
        update["ready_min_workers"] = 1
    if "QUANTA_ALLOWED_HOSTS" not in os.environ:
        if host in WILDCARD_BINDS:
            update["allowed_hosts"] = "*"
        elif host.strip("[]").lower() not in settings.allowed_hosts.split(","):
            update["allowed_hosts"] = f"{settings.allowed_hosts},{host}"
    return settings.model_copy(update=update) if update else settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn  # here: `quanta-serve migrate` does not need it

    from api.connections import guarded

    _Server = _server_class()

    from api.main import create_app

    settings = serve_settings(get_settings(), args.workers, args.host)
    log.info("answering to the hosts %s (QUANTA_ALLOWED_HOSTS)", settings.allowed_hosts)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    problem = check_auth(settings, args.host)
    if problem is not None:
        log.error("%s", problem)
        print(f"quanta-serve: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    gpus = [g for g in (args.gpus or "").split(",") if g.strip()]
    workers = start_workers(args.workers, gpus, args.log_level)
    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port,
                            log_level=args.log_level.lower(), proxy_headers=True,
                            http=guarded(settings.header_timeout_s, settings.max_connections))
    server = _Server(config, workers=args.workers)
    # What is imported and built by now lives as long as the process: out of the cyclic
    # collector's reach, full collections stop walking it. They otherwise paused a request
    # now and then (the p99 in docs/performance.md).
    gc.collect()
    gc.freeze()
    stopping = [False]

    def on_signal(signum: int, _frame: object) -> None:
        # uvicorn restores this handler after its graceful shutdown and raises the signal
        # again: we then stop the workers; a second signal while stopping kills them.
        if stopping[0]:
            for process in workers:
                if process.poll() is None:
                    process.kill()
        stopping[0] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    supervisor = Supervisor(workers, gpus, args.log_level,
                            stopping=lambda: stopping[0] or server.should_exit).start()
    try:
        server.run()
    finally:
        stopping[0] = True
        supervisor.stop()
        stop_processes(workers, args.stop_timeout)
    return 0 if server.started else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quanta-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes to start (0: the API alone)")
    parser.add_argument("--gpus", default=os.environ.get("QUANTA_GPUS", ""),
                        help="comma-separated GPU ids, handed to the workers in turn")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--stop-timeout", type=float, default=60.0,
                        help="seconds workers get to stop before being killed")
    sub = parser.add_subparsers(dest="command")
    migrate = sub.add_parser("migrate", help="apply the database migrations and exit")
    migrate.add_argument("revision", nargs="?", default="head")
    token = sub.add_parser("token", help="create, revoke or list API tokens (in the database)")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token and print it (once)")
    create.add_argument("name", help="owner of what the token creates (letters, digits, _.@-)")
    create.add_argument("--admin", action="store_true", help="sees every owner's jobs")
    revoke = actions.add_parser("revoke", help="revoke the active tokens of a name (or an id)")
    revoke.add_argument("name", metavar="NAME_OR_ID")
    actions.add_parser("list", help="list tokens (never their secrets)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except UnsupportedDatabase as exc:  # one line, not a traceback at every restart
        log.error("%s", exc)
        print(f"quanta-serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _run(args: argparse.Namespace) -> int:
    if args.command == "migrate":
        upgrade(revision=args.revision)
        return 0
    if args.command == "token":
        from api.tokens import command

        settings = get_settings()
        settings.ensure_dirs()
        upgrade(settings.database_url)
        return command(args, settings)
    return serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
