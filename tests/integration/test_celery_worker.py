"""Acceptance for the Celery worker plane, against real `celery -A app.workers.celery_app
worker|beat` subprocesses (scripts.harness.celery_processes) and a real redis-server:

- a task the api recorded and sent by name runs on the worker, which writes the same record;
- legacy `.delay()` records the task before publishing, and the status endpoint serves it;
- retries go through Celery (self.retry) and end with the right attempt count;
- heartbeats announce queues and concurrency; SIGTERM is a warm shutdown that removes them;
- active:{queue} holds a running task's id and loses it when the task ends;
- a lost pool child, and a SIGKILLed worker: idempotent tasks run again and apply their side
  effect exactly once, non-idempotent ones fail Interrupted instead of running twice;
- beat sends its first due schedule entry and a worker completes it.
"""

from __future__ import annotations

import base64
import time
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.tasks import presence
from app.core.tasks.models import DEFAULT_PRIORITY, TaskStatus
from app.core.tasks.presence import WorkerInfo, WorkerKeys
from app.main import create_app
from app.workers.celery_config import TasklaneCelery, create_celery_app
from scripts.harness.celery_processes import CeleryBeat, CeleryWorker, make_entry_due
from scripts.harness.processes import RedisServer, clean_environment, run_python
from tests.support.presence import mark_active
from tests.support.records import FINISHED, Records

pytestmark = pytest.mark.integration

KEYS = WorkerKeys("tasklane:")


def wait_until(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[CeleryWorker]:
    with CeleryWorker(redis_url, log_path=tmp_path / "worker.log") as started:
        yield started


@pytest.mark.parametrize(
    ("name", "args", "queue", "result"),
    [("celery_add", [2, 3], "light", 5), ("celery_effect_once", ["sent", 0.05], "heavy", 1)],
)
def test_a_recorded_task_sent_by_name_runs_on_the_worker(
    worker: CeleryWorker,
    records: Records,
    sender: TasklaneCelery,
    name: str,
    args: list[Any],
    queue: str,
    result: int,
) -> None:
    record = records.create(name, args, queue)

    sender.send_task(name, args=args, queue=queue, task_id=record.task_id)

    [done] = records.wait([record.task_id], FINISHED, worker)
    assert done.status is TaskStatus.SUCCESS, done.error
    assert (done.executor, done.worker, done.queue) == ("celery", worker.hostname, queue)
    assert (done.result, done.attempts) == (result, 1)


def test_legacy_delay_records_the_task_and_the_status_endpoint_serves_it(
    worker: CeleryWorker, records: Records, redis_url: str
) -> None:
    chunk = base64.b64encode(array("h", [8000, -8000] * 1600).tobytes()).decode()
    caller = (
        "from app.workers.tasks import process_speak_audio\n"
        f"print(process_speak_audio.delay('resource-1', [{chunk!r}], 'ada').id)\n"
    )
    env = clean_environment(CELERY_BROKER_URL=redis_url, REDIS_URL=redis_url)

    published = run_python(caller, env=env, timeout=30, check=True)
    task_id = published.stdout.strip().splitlines()[-1]

    recorded = records.get(task_id)  # written before publishing: never an unknown id
    assert recorded is not None
    assert (recorded.name, recorded.executor, recorded.queue, recorded.priority) == (
        "process_speak_audio",
        "celery",
        "heavy",
        DEFAULT_PRIORITY,  # no priority given: the task's, as a submit would have it
    )
    [done] = records.wait([task_id], FINISHED, worker)
    assert done.status is TaskStatus.SUCCESS, done.error
    assert done.worker == worker.hostname
    settings = Settings(redis_url=redis_url, store="redis", executor="background", scheduler="off")
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/api/tasks/{task_id}/status").json()
    assert (body["status"], body["executor"], body["worker"]) == (
        "SUCCESS",
        "celery",
        worker.hostname,
    )
    assert body["result"]["resource_id"] == "resource-1"


def test_retries_go_back_through_celery_until_the_last_attempt(
    worker: CeleryWorker, records: Records, sender: TasklaneCelery
) -> None:
    failing = records.create("celery_flaky", [0], "light")
    recovering = records.create("celery_flaky", [2], "light")

    for record in (failing, recovering):
        sender.send_task("celery_flaky", args=record.args, queue="light", task_id=record.task_id)

    failed, recovered = records.wait([failing.task_id, recovering.task_id], FINISHED, worker)
    assert (failed.status, failed.attempts) == (TaskStatus.FAILURE, 3)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ValueError", "attempt 3 fails on purpose")
    assert (recovered.status, recovered.attempts, recovered.error) == (TaskStatus.SUCCESS, 2, None)
    log = worker.log()
    # Each retry was a new message (self.retry), not a sleep inside the worker slot.
    assert log.count(f"celery_flaky[{failing.task_id}] retry: Retry in") == 2
    assert log.count(f"celery_flaky[{recovering.task_id}] retry: Retry in") == 1


def test_heartbeat_announces_the_worker_and_warm_shutdown_removes_it(
    worker: CeleryWorker, records: Records, sender: TasklaneCelery
) -> None:
    client = records.client
    announced = client.hgetall(KEYS.worker(worker.hostname))
    assert announced["queues"] == "light,heavy"
    assert announced["concurrency"] == "2"
    assert int(announced["pid"]) == worker.pid
    assert announced["version"]
    assert 0 < client.ttl(KEYS.worker(worker.hostname)) <= 3  # 6 intervals of 0.5 s
    first = client.zscore(KEYS.workers, worker.hostname)
    wait_until(lambda: client.zscore(KEYS.workers, worker.hostname) > first, "a second beat")

    record = records.create("celery_effect_once", ["warm", 1.5], "heavy")
    sender.send_task("celery_effect_once", args=record.args, queue="heavy", task_id=record.task_id)
    records.wait([record.task_id], {TaskStatus.STARTED}, worker)

    assert worker.terminate() == 0
    assert records.get(record.task_id).status is TaskStatus.SUCCESS  # finished, not killed
    assert client.zscore(KEYS.workers, worker.hostname) is None
    assert not client.exists(KEYS.worker(worker.hostname), KEYS.worker_active(worker.hostname))


def test_active_set_holds_a_running_task_until_it_ends(
    worker: CeleryWorker, records: Records, sender: TasklaneCelery
) -> None:
    client = records.client
    record = records.create("celery_effect_once", ["active", 2.0], "heavy")

    sender.send_task("celery_effect_once", args=record.args, queue="heavy", task_id=record.task_id)

    # Listed before the record says STARTED, removed after it says SUCCESS.
    records.wait([record.task_id], {TaskStatus.STARTED}, worker)
    assert client.zscore(KEYS.active("heavy"), record.task_id) is not None
    assert client.hget(KEYS.worker_active(worker.hostname), record.task_id) == "heavy"
    records.wait([record.task_id], FINISHED, worker)
    # Removed right after the final record is written (the record comes first).
    wait_until(lambda: client.zcard(KEYS.active("heavy")) == 0, "active:heavy emptied")
    assert not client.exists(KEYS.worker_active(worker.hostname))


def test_a_lost_pool_process_reruns_its_idempotent_task(
    worker: CeleryWorker, records: Records, sender: TasklaneCelery
) -> None:
    record = records.create("celery_die_once", ["lost"], "heavy")

    sender.send_task("celery_die_once", args=record.args, queue="heavy", task_id=record.task_id)

    [done] = records.wait([record.task_id], FINISHED, worker)
    assert (done.status, done.result, done.attempts, done.error) == (
        TaskStatus.SUCCESS,
        "survived",
        2,
        None,
    )
    assert "WorkerLostError" in worker.log()
    client = records.client
    wait_until(lambda: client.zcard(KEYS.active("heavy")) == 0, "active:heavy emptied")


def test_tasks_of_a_sigkilled_worker_are_taken_over_and_applied_exactly_once(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    client = records.client
    # The broker hands a dead worker's unacknowledged messages out again after 3 s.
    env = {"TASKLANE_VISIBILITY_TIMEOUT": "3"}
    safe = [records.create("celery_effect_once", ["kill", 2.0], "heavy") for _ in range(3)]
    unsafe = records.create("celery_effect_unsafe", ["kill-unsafe", 2.0], "heavy")
    everything = [*safe, unsafe]

    with CeleryWorker(
        redis_url, log_path=tmp_path / "doomed.log", concurrency=4, env=env
    ) as doomed:
        for record in everything:
            sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)
        records.wait([r.task_id for r in everything], {TaskStatus.STARTED}, doomed)
        # Kill only once every body is inside its sleep (after counting its run).
        runs = [f"{r.args[0]}:runs:{r.task_id}" for r in everything]
        wait_until(lambda: client.exists(*runs) == 4, "every body running")
        assert client.zcard(KEYS.active("heavy")) == 4
        doomed.kill()

    with CeleryWorker(redis_url, log_path=tmp_path / "heir.log", concurrency=4, env=env) as heir:
        finished = records.wait([r.task_id for r in everything], FINISHED, heir, timeout=25)

        for record in finished[:3]:
            assert record.status is TaskStatus.SUCCESS, record.error
            assert (record.worker, record.attempts) == (heir.hostname, 2)
            assert client.get(f"kill:runs:{record.task_id}") == "2"
        assert client.get("kill:effects") == "3"
        interrupted = finished[3]
        assert interrupted.status is TaskStatus.FAILURE
        assert interrupted.error is not None
        assert interrupted.error.type == "Interrupted"
        assert f"worker {doomed.hostname} died during the task" in interrupted.error.message
        assert client.get(f"kill-unsafe:runs:{unsafe.task_id}") == "1"  # never ran twice
        assert client.get("kill-unsafe:effects") is None

        # The heir's heartbeat purged everything the dead worker had announced.
        wait_until(lambda: client.zscore(KEYS.workers, doomed.hostname) is None, "purge")
        assert not client.exists(KEYS.worker(doomed.hostname), KEYS.worker_active(doomed.hostname))
        wait_until(lambda: client.zcard(KEYS.active("heavy")) == 0, "active:heavy emptied")


def test_a_redelivery_of_a_task_still_running_is_not_run_again(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    # A visibility timeout shorter than the task: the broker hands the unacknowledged message
    # out again while the first attempt still runs (the worker itself sweeps every second).
    env = {"TASKLANE_VISIBILITY_TIMEOUT": "1"}
    record = records.create("celery_effect_unsafe", ["dup", 4.0], "heavy")

    with CeleryWorker(redis_url, log_path=tmp_path / "worker.log", env=env) as worker:
        sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)
        [done] = records.wait([record.task_id], FINISHED, worker)

        assert (done.status, done.attempts, done.result) == (TaskStatus.SUCCESS, 1, 1)
        assert records.client.get(f"dup:runs:{record.task_id}") == "1"
        assert "duplicate delivery of a running task ignored" in worker.log()


def test_beat_sends_its_first_due_entry_and_a_worker_completes_it(
    worker: CeleryWorker, records: Records, sender: TasklaneCelery, redis_url: str, tmp_path: Path
) -> None:
    schedule = tmp_path / "beat" / "schedule"
    schedule.parent.mkdir()
    make_entry_due(sender, schedule, "cleanup-sessions")

    with CeleryBeat(redis_url, log_path=tmp_path / "beat.log", schedule_path=schedule) as beat:
        wait_until(lambda: records.named("cleanup_sessions"), "beat sending cleanup_sessions")
        [sent] = records.named("cleanup_sessions")
        [done] = records.wait([sent.task_id], FINISHED, worker)
        assert done.status is TaskStatus.SUCCESS, done.error
        assert (done.executor, done.worker, done.queue) == ("celery", worker.hostname, "light")
        # The other entries are not due before their first interval.
        assert not records.named("sync_impressions_from_redis")
        assert beat.terminate() == 0


def test_a_redis_outage_only_pauses_the_heartbeat(
    worker: CeleryWorker, records: Records, sender: TasklaneCelery, redis_server: RedisServer
) -> None:
    redis_server.stop()
    wait_until(lambda: "worker heartbeat failed" in worker.log(), "a heartbeat warning")
    assert worker.alive()

    redis_server.start()  # same port, empty: the worker must announce itself again
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    wait_until(lambda: "worker heartbeat resumed" in worker.log(), "the heartbeat resuming")
    assert client.zscore(KEYS.workers, worker.hostname) is not None
    assert client.hget(KEYS.worker(worker.hostname), "queues") == "light,heavy"
    record = records.create("celery_add", [20, 22], "light")
    sender.send_task("celery_add", args=record.args, queue="light", task_id=record.task_id)
    [done] = records.wait([record.task_id], FINISHED, worker, timeout=25)
    assert (done.status, done.result) == (TaskStatus.SUCCESS, 42)
    client.close()


def test_a_message_waits_for_an_unreachable_result_store_instead_of_being_lost(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    broker = RedisServer()  # a broker of its own, so only the store goes away
    broker.start()
    try:
        env = {"REDIS_URL": redis_url}
        with CeleryWorker(broker.url, log_path=tmp_path / "worker.log", env=env) as worker:
            redis_server.stop()
            app = create_celery_app(Settings(celery_broker_url=broker.url, redis_url=redis_url))
            app.send_task("celery_add", args=[1, 2], queue="light", task_id="store-outage")
            app.close()
            wait_until(lambda: "result store unavailable" in worker.log(), "a retry warning")

            redis_server.start()
            records = Records(redis_url)
            [done] = records.wait(["store-outage"], FINISHED, worker, timeout=20)
            assert (done.status, done.result, done.executor) == (TaskStatus.SUCCESS, 3, "celery")
            records.client.close()
    finally:
        broker.cleanup()


def test_an_outcome_reached_while_the_store_is_away_is_written_when_it_returns(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    """The store goes away mid-task and comes back with its data (a Redis pod restarted from
    its volume): the attempt's outcome waits in the pool process and is written then, instead
    of the record staying STARTED under a live worker that no reaper would settle."""
    broker = RedisServer()  # a broker of its own, so only the store goes away
    broker.start()
    try:
        env = {"REDIS_URL": redis_url}
        with CeleryWorker(broker.url, log_path=tmp_path / "worker.log", env=env) as worker:
            records = Records(redis_url)
            record = records.create("celery_sleep_terminable", [1.5], "heavy")
            app = create_celery_app(Settings(celery_broker_url=broker.url, redis_url=redis_url))
            app.send_task(
                "celery_sleep_terminable", args=[1.5], queue="heavy", task_id=record.task_id
            )
            app.close()
            records.wait([record.task_id], {TaskStatus.STARTED}, worker)
            records.client.close()

            redis_server.stop(keep_data=True)  # the body finishes while the store is away
            wait_until(lambda: "outcome kept" in worker.log(), "the outcome held back", 10)
            redis_server.start()

            records = Records(redis_url)
            [done] = records.wait([record.task_id], FINISHED, worker, timeout=20)
            assert (done.status, done.result, done.worker) == (
                TaskStatus.SUCCESS,
                "slept",
                worker.hostname,
            )
            # The active entry rode with the late write.
            assert records.client.zcard(KEYS.active("heavy")) == 0
            assert not records.client.exists(KEYS.worker_active(worker.hostname))
            records.client.close()
    finally:
        broker.cleanup()


# -- the presence keys on their own (real Redis, no worker) ----------------------------------


def _info(hostname: str, started: float) -> WorkerInfo:
    return WorkerInfo(
        hostname=hostname, queues=("heavy",), concurrency=1, pid=1, version="t", started=started
    )


def test_an_attempt_runs_only_while_its_worker_incarnation_lists_it(records: Records) -> None:
    client, now = records.client, time.time()
    presence.write_heartbeat(client, KEYS, _info("w@h", started=now - 10), interval=5)
    mark_active(client, KEYS, "w@h", "t1", "heavy")
    begun = datetime.fromtimestamp(now - 5, UTC)

    def running(task_id: str = "t1", started: datetime = begun) -> bool:
        return presence.attempt_running(
            client, KEYS, hostname="w@h", task_id=task_id, attempt_started=started, interval=5
        )

    assert running()
    assert not running(task_id="t2")  # live worker, but not running that one
    # The same hostname restarted after the attempt began: that attempt died with the old one.
    presence.write_heartbeat(client, KEYS, _info("w@h", started=now), interval=5)
    assert not running()
    assert running(started=datetime.fromtimestamp(now + 1, UTC))
    client.zadd(KEYS.workers, {"w@h": now - 16})  # three missed beats: dead
    assert not running(started=datetime.fromtimestamp(now + 1, UTC))


def test_purge_removes_only_dead_workers_and_their_active_entries(records: Records) -> None:
    client, now = records.client, time.time()
    for hostname in ("dead@h", "live@h"):
        presence.write_heartbeat(client, KEYS, _info(hostname, now), interval=1)
        mark_active(client, KEYS, hostname, f"{hostname}-task", "heavy")
    client.zadd(KEYS.workers, {"dead@h": now - 10})

    assert presence.purge_dead(client, KEYS, interval=1) == ["dead@h"]

    assert client.zrange(KEYS.workers, 0, -1) == ["live@h"]
    assert client.zrange(KEYS.active("heavy"), 0, -1) == ["live@h-task"]
    assert not client.exists(KEYS.worker("dead@h"), KEYS.worker_active("dead@h"))
    assert presence.purge_dead(client, KEYS, interval=1) == []
