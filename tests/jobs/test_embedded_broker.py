"""The embedded broker (kombu's SQLAlchemy transport on SQLite, `quanta_jobs.sqla_transport`)
when several processes start at once, as `quanta-serve --workers N` starts its workers.

Each process declares the same queue at the same moment (a barrier lines them up); with
the stock transport the processes that lose the UNIQUE constraint on the queue's name
crash. Real processes and a real SQLite file: the race is between processes, which the
stock transport's own lock (a thread lock) cannot see.
"""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

PROCESSES = 6
ROUNDS = 4


def _declare(url: str, queue: str, barrier: multiprocessing.synchronize.Barrier,
             results: multiprocessing.queues.Queue) -> None:
    from kombu import Connection

    from quanta_jobs.sqla_transport import install

    install()
    try:
        with Connection(url) as conn:
            channel = conn.channel()
            channel.session  # noqa: B018 - open the engine before the race starts
            barrier.wait(timeout=60)
            channel.queue_declare(queue)
            channel._put(queue, {"body": "x"})
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_declaring_one_queue_at_once_all_succeed(tmp_path: Path) -> None:
    from kombu import Connection

    from quanta_jobs.sqla_transport import install

    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    install()
    with Connection(url) as conn:  # the tables, as the API creates them at its start
        conn.channel().queue_declare("warm-up")
    context = multiprocessing.get_context("spawn")
    outcomes: list[str] = []
    names = []
    for _ in range(ROUNDS):
        queue = f"race-{uuid.uuid4().hex[:8]}"
        names.append(queue)
        barrier = context.Barrier(PROCESSES)
        results = context.Queue()
        processes = [context.Process(target=_declare, args=(url, queue, barrier, results))
                     for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        outcomes += [results.get(timeout=10) for _ in processes]
    assert outcomes == ["ok"] * (PROCESSES * ROUNDS), [o for o in outcomes if o != "ok"]
    with Connection(url) as conn:  # one row per queue, every message in it
        channel = conn.channel()
        for queue in names:
            assert channel._size(queue) == PROCESSES
