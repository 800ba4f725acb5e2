"""Issue 11 item 3's acceptance: 200 heavy tasks, a worker's process group SIGKILLed three
times (an OOM-killed pod, a new one started after each), the DEFAULT visibility timeout (an
hour): every record is terminal within 30 s of the last kill, each idempotent side effect is
applied exactly once, and no non-idempotent task runs twice (those interrupted end FAILURE
`Interrupted`). Without recovery the killed workers' messages would wait an hour in `unacked`.
Heartbeat and monitor intervals are the defaults too (5 s, 2 s).

Real redis-server, real prefork `celery worker` processes, a WorkerMonitor with recovery in
the test process (an api's).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.redelivery import UNACKED
from app.workers.celery_config import MIN_VISIBILITY_TIMEOUT, create_celery_app
from scripts.harness.celery_processes import CeleryWorker
from tests.integration.test_dead_worker_recovery import KEYS, running_monitor, wait_until
from tests.support.records import FINISHED, Records

pytestmark = pytest.mark.integration

TASKS, SECONDS, KILLS, CONCURRENCY = 200, 0.5, 3, 4
#: The issue's bound, from the last kill to every record terminal.
TERMINAL_WITHIN = 30.0
#: Heartbeat and monitor intervals as shipped (5 s, 2 s), whatever the environment says.
HEARTBEAT = Settings.model_fields["worker_heartbeat_interval"].default
MONITOR_INTERVAL = Settings.model_fields["monitor_interval"].default


def recovered() -> float:
    return REGISTRY.get_sample_value("tasklane_recovered_total", {"reason": "worker_dead"}) or 0.0


def test_three_killed_workers_lose_no_task_and_run_no_side_effect_twice(
    redis_url: str, tmp_path: Path
) -> None:
    records = Records(redis_url)
    client = records.client
    sender = create_celery_app(Settings(celery_broker_url=redis_url, redis_url=redis_url))
    safe = [records.create("celery_effect_once", ["load", SECONDS], "heavy") for _ in range(100)]
    unsafe = [
        records.create("celery_effect_unsafe", ["load-unsafe", SECONDS], "heavy")
        for _ in range(TASKS - len(safe))
    ]
    everything = [record for pair in zip(safe, unsafe, strict=True) for record in pair]
    before = recovered()

    def worker(name: str) -> CeleryWorker:
        return CeleryWorker(
            redis_url,
            log_path=tmp_path / f"{name}.log",
            concurrency=CONCURRENCY,
            heartbeat_interval=HEARTBEAT,
        )

    with contextlib.ExitStack() as stack:
        monitor = stack.enter_context(
            running_monitor(redis_url, heartbeat_interval=HEARTBEAT, interval=MONITOR_INTERVAL)
        )
        stable = stack.enter_context(worker("stable"))
        doomed = stack.enter_context(worker("doomed-0"))
        # The default visibility timeout: an hour before kombu would hand anything out again.
        assert "TASKLANE_VISIBILITY_TIMEOUT" not in stable.env
        assert sender.conf.broker_transport_options["visibility_timeout"] >= MIN_VISIBILITY_TIMEOUT
        for record in everything:
            sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)

        killed: list[str] = []
        for kill in range(KILLS):
            # Kill it mid-work (holding messages, some of them running), once the api has seen
            # its heartbeat connection, as for a pod that was up for more than a monitor tick
            # (one killed sooner is noticed by its 15 s heartbeat window instead).
            wait_until(lambda w=doomed: held_by(client, w.hostname) >= 2, 60, "doomed working")
            wait_until(lambda w=doomed: seen(monitor, w.hostname), 30, "connection seen")
            time.sleep(SECONDS / 2)
            doomed.kill()
            last_kill = time.monotonic()
            killed.append(doomed.hostname)
            doomed = stack.enter_context(worker(f"doomed-{kill + 1}"))

        finished = wait_all(records, [r.task_id for r in everything], stable, last_kill)

    elapsed = time.monotonic() - last_kill
    by_id = {record.task_id: record for record in finished}
    for record in safe:
        done = by_id[record.task_id]
        assert done.status is TaskStatus.SUCCESS, done.error
        assert client.exists(f"load:done:{record.task_id}")
    assert client.get("load:effects") == str(len(safe))  # each idempotent effect once

    interrupted = 0
    for record in unsafe:
        done = by_id[record.task_id]
        assert client.get(f"load-unsafe:runs:{record.task_id}") == "1", done  # never twice
        if done.status is TaskStatus.FAILURE:
            assert done.error is not None
            assert done.error.type == "Interrupted", done.error
            interrupted += 1
        else:
            assert done.status is TaskStatus.SUCCESS, done
    assert interrupted >= 1  # some were killed mid-run (12 held over 3 kills, half unsafe)

    # Nothing left for the visibility timeout, and the monitor counted what it restored.
    assert client.hlen(UNACKED) == 0
    assert not set(client.hvals(KEYS.unacked_holders)) & set(killed)
    assert recovered() - before >= 1
    print(f"terminal {elapsed:.1f} s after the last kill; {interrupted} interrupted")
    records.client.close()
    sender.close()


def seen(monitor: WorkerMonitor, hostname: str) -> bool:
    return any(w.hostname == hostname and w.connected for w in monitor.snapshot.workers)


def held_by(client: redis.Redis, hostname: str) -> int:
    return list(client.hvals(KEYS.unacked_holders)).count(hostname)


def wait_all(
    records: Records, ids: list[str], worker: CeleryWorker, since: float
) -> list[TaskResult]:
    deadline = since + TERMINAL_WITHIN
    while True:
        found = [records.get(task_id) for task_id in ids]
        if all(record is not None and record.status in FINISHED for record in found):
            return found  # type: ignore[return-value]
        if time.monotonic() > deadline:
            waiting = [r.task_id for r in found if r is None or r.status not in FINISHED]
            pytest.fail(
                f"{len(waiting)} records not terminal {TERMINAL_WITHIN} s after the last kill: "
                f"{waiting[:5]}\n{worker.log()[-3000:]}"
            )
        time.sleep(0.1)
