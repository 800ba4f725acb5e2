"""Acceptance (issue 11, item 1): a busy pool of two real `tasklane worker --concurrency 2`
processes (scripts.harness.celery_processes.CeleryWorker) survives three restarts of its
redis-server (broker and store), with and without persistence, and keeps consuming.

The load is a steady stream of heavy 0.2 s tasks, at half the pool's capacity: slots busy with
unacknowledged messages while others wait on a BRPOP, the state in which the Redis
connection's loss used to kill the worker (app.workers.broker). Each run appends its task id
to a file (scripts.harness.celery_sample_tasks.celery_logged_run), evidence Redis cannot lose.

"Every task ends once":
- restart with persistence (SHUTDOWN SAVE, started from the RDB): every task accepted before
  it ends SUCCESS and ran exactly once;
- restart without persistence (the data is lost with the server: queue, records, unacked
  messages): tasks accepted before it ran at most once (queued ones are gone with the data);
- every task accepted after the last restart ends SUCCESS and ran exactly once, and no task of
  the whole run ran twice, also after the visibility timeout let kombu's sweep redeliver any
  message whose acknowledgement the outage swallowed (its record is found finished).
After each restart both workers are alive and each finishes tasks submitted after it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError

from app.config import Settings
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.workers.celery_config import create_celery_app
from scripts.harness.celery_processes import CeleryWorker
from scripts.harness.processes import RedisServer

pytestmark = pytest.mark.integration

TASK = "celery_logged_run"
SECONDS = 0.2
#: Submissions per second: half of what 2 workers x 2 slots of 0.2 s tasks can take.
RATE = 10.0
#: Short, so a message whose ack the outage swallowed is redelivered within the test.
VISIBILITY = 8
#: (persistence) per restart, in order.
RESTARTS = (True, False, True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own: it is restarted, with and without its data."""
    own = RedisServer()
    own.start()
    yield own
    own.cleanup()


class Stream:
    """Submits TASK at RATE from a thread; remembers each accepted id with the number of
    restarts done when it was accepted (a refused publish, Redis down, is skipped)."""

    def __init__(self, server: RedisServer, run_log: Path) -> None:
        self.app = create_celery_app(Settings(celery_broker_url=server.url))
        self.run_log = run_log
        self.accepted: list[tuple[int, str]] = []
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1 / RATE):
            task_id = str(uuid.uuid4())
            epoch = self.restarts
            with contextlib.suppress(OperationalError, OSError):
                self.app.send_task(
                    TASK,
                    args=[str(self.run_log), SECONDS],
                    task_id=task_id,
                    queue="heavy",
                    retry=False,
                )
                self.accepted.append((epoch, task_id))

    def ids(self, epoch: int) -> list[str]:
        return [task_id for accepted_in, task_id in list(self.accepted) if accepted_in == epoch]

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def records(server: RedisServer, task_ids: list[str]) -> dict[str, dict]:
    """The stored records of task_ids that exist, by id."""
    if not task_ids:
        return {}
    raw = server.client().mget([f"tasklane:task:{task_id}" for task_id in task_ids])
    return {
        task_id: json.loads(value)
        for task_id, value in zip(task_ids, raw, strict=True)
        if value is not None
    }


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, workers: list[CeleryWorker]
) -> None:
    """Poll check(); fail at once, with its log, when a worker process has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        for worker in workers:
            assert worker.alive(), f"worker {worker.hostname} exited:\n{worker.log()[-6000:]}"
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)


def test_busy_workers_survive_three_redis_restarts_and_every_task_ends_once(
    server: RedisServer, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    env = {"TASKLANE_VISIBILITY_TIMEOUT": str(VISIBILITY)}
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                CeleryWorker(
                    server.url,
                    log_path=tmp_path / f"worker-{n}.log",
                    queues=("heavy",),
                    concurrency=2,
                    launcher="tasklane",
                    env=env,
                )
            )
            for n in range(2)
        ]
        stream = stack.enter_context(Stream(server, run_log))

        def finished_by_each_worker(epoch: int) -> bool:
            done = records(server, stream.ids(epoch)).values()
            finished_by = {r["worker"] for r in done if r["status"] == "SUCCESS"}
            return all(w.hostname in finished_by for w in workers)

        def all_succeeded(task_ids: list[str]) -> bool:
            found = records(server, task_ids)
            return len(found) == len(task_ids) and all(
                r["status"] == "SUCCESS" for r in found.values()
            )

        kept: list[str] = []  # tasks whose records no restart lost
        for restart, persistence in enumerate(RESTARTS, start=1):
            before = restart - 1
            # Busy: tasks running (unacknowledged) and slots waiting on BRPOP, in both workers.
            wait_until(lambda e=before: finished_by_each_worker(e), 30, "both busy", workers)
            time.sleep(0.5)
            server.stop(keep_data=persistence)
            time.sleep(2)
            server.start()
            stream.restarts = restart
            wait_until(
                lambda e=restart: finished_by_each_worker(e),
                45,
                f"both workers consuming after restart {restart}",
                workers,
            )
            if persistence:
                ids = stream.ids(before)
                wait_until(
                    lambda ids=ids: all_succeeded(ids),
                    45,
                    f"every task accepted before restart {restart} SUCCESS",
                    workers,
                )
                kept += ids
        time.sleep(1)
        stream.__exit__()
        last_restart = time.monotonic()
        ids = stream.ids(len(RESTARTS))
        wait_until(lambda: all_succeeded(ids), 45, "every task after the last SUCCESS", workers)
        kept += ids

        # The sweep (every VISIBILITY // 4 s) redelivers messages left unacknowledged by the
        # outages; each finds its record finished. Then nothing is left in flight.
        redis = server.client()
        wait_until(
            lambda: (
                time.monotonic() - last_restart > VISIBILITY + 3
                and redis.hlen("unacked") == 0
                and BROKER_LAYOUT.waiting(redis, "heavy") == 0
            ),
            45,
            "no message left unacknowledged or queued",
            workers,
        )
        assert all(worker.alive() for worker in workers)

    runs = Counter(run_log.read_text().split())
    twice = {task_id: n for task_id, n in runs.items() if n > 1}
    assert not twice, f"tasks ran more than once: {twice}"
    assert [task_id for task_id in kept if runs[task_id] != 1] == []
    # Accepted before the restart without persistence: ran once or was lost with the queue.
    assert stream.ids(RESTARTS.index(False)), "no task accepted before the data was lost"
    assert "Unrecoverable error" not in "".join(w.log() for w in workers)
