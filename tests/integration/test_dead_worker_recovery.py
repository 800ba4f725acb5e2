"""A dead worker's unacknowledged messages go back to their queues within seconds, with the
default visibility timeout (an hour), and never a live worker's (app/core/tasks/recovery.py).

Real redis-server, real prefork `celery worker` processes killed with SIGKILL of their process
group (an OOM-killed pod), a WorkerMonitor with recovery in the test process (an api's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.models import TaskStatus
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.presence import LivenessRule, WorkerKeys
from app.core.tasks.recovery import Recovery
from app.core.tasks.redelivery import UNACKED
from app.workers.celery_config import TasklaneCelery, create_celery_app
from app.workers.transport import HOLDER_OPTION, HOLDERS_KEY_OPTION, TRANSPORT_PATH
from scripts.harness.celery_processes import CeleryWorker
from scripts.harness.processes import RedisServer
from tests.support.records import FINISHED, Records

pytestmark = pytest.mark.integration

KEYS = WorkerKeys("tasklane:")
HEARTBEAT = 1.0  # window 3 s, a closed connection counts after 2 s
RULE = LivenessRule(liveness=3 * HEARTBEAT, disconnect_grace=HEARTBEAT + 1)


def recovered() -> float:
    return REGISTRY.get_sample_value("tasklane_recovered_total", {"reason": "worker_dead"}) or 0.0


def monitor_for(
    redis_url: str, heartbeat_interval: float = HEARTBEAT, interval: float = 0.2
) -> WorkerMonitor:
    return WorkerMonitor(
        redis_url,
        heartbeat_interval=heartbeat_interval,
        interval=interval,
        recovery=BROKER_LAYOUT,
    )


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextlib.contextmanager
def running_monitor(
    redis_url: str, heartbeat_interval: float = HEARTBEAT, interval: float = 0.2
) -> Iterator[WorkerMonitor]:
    """A WorkerMonitor with recovery polling on its own loop thread, as in an api process."""
    monitor = monitor_for(redis_url, heartbeat_interval, interval)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(monitor.start(), loop).result(10)
    try:
        yield monitor
    finally:
        asyncio.run_coroutine_threadsafe(monitor.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def redis_up_for_a_window(client: redis.Redis) -> None:
    """A worker that never beat counts dead only once Redis has been up for a whole window."""
    window = RULE.liveness + 1
    wait_until(lambda: client.info("server")["uptime_in_seconds"] >= window, 10, "uptime")


def restored_in_log(log: str) -> int:
    """Messages a worker's log says it restored for dead workers."""
    found = re.findall(r"restored (\d+) unacknowledged messages of dead worker", log)
    return sum(int(count) for count in found)


def holders(client: redis.Redis) -> dict[str, str]:
    return client.hgetall(KEYS.unacked_holders)


def test_two_monitors_racing_restore_each_message_of_a_killed_worker_once(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    client = records.client
    tasks = [records.create("celery_effect_unsafe", ["race", 60.0], "heavy") for _ in range(3)]
    with CeleryWorker(
        redis_url, log_path=tmp_path / "doomed.log", heartbeat_interval=HEARTBEAT
    ) as doomed:
        for record in tasks:
            sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)
        # Concurrency 2: two run, the third waits in the queue (never held by the worker).
        wait_until(lambda: len(holders(client)) == 2, 20, "two messages held")
        running = [f"race:runs:{r.task_id}" for r in tasks]
        wait_until(lambda: client.exists(*running) == 2, 20, "two bodies running")
        assert set(holders(client).values()) == {doomed.hostname}
        held = set(holders(client))
        assert BROKER_LAYOUT.waiting(client, "heavy") == 1
        doomed.kill()

    async def race() -> list[dict[str, int]]:
        monitors = [monitor_for(redis_url) for _ in range(4)]
        try:
            await asyncio.sleep(3 * HEARTBEAT + 0.2)  # its window passes: dead by the rule
            for monitor in monitors:
                await monitor.refresh()
            return list(await asyncio.gather(*(monitor.recover() for monitor in monitors)))
        finally:
            for monitor in monitors:
                await monitor.stop()

    before = recovered()
    results = asyncio.run(race())

    assert sum(result.get(doomed.hostname, 0) for result in results) == 2, results
    assert recovered() - before == 2
    queued = [
        json.loads(raw)
        for name in BROKER_LAYOUT.queue_lists("heavy")
        for raw in client.lrange(name, 0, -1)
    ]
    assert len(queued) == 3  # the two restored plus the one never taken: none twice
    assert sorted(m["headers"]["id"] for m in queued) == sorted(r.task_id for r in tasks)
    restored = [m for m in queued if m["properties"]["delivery_tag"] in held]
    assert len(restored) == 2
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in restored)
    assert client.hlen(UNACKED) == 0
    assert holders(client) == {}
    assert client.zscore(KEYS.workers, doomed.hostname) is None  # fenced out of presence
    assert client.exists(KEYS.worker_evicted(doomed.hostname))

    # An heir settles them by today's rule: non-idempotent and STARTED -> Interrupted.
    started = [r for r in tasks if records.get(r.task_id).status is TaskStatus.STARTED]
    assert len(started) == 2
    with CeleryWorker(redis_url, log_path=tmp_path / "heir.log", heartbeat_interval=HEARTBEAT):
        for record in started:
            done = records.get(record.task_id)
            deadline = time.monotonic() + 20
            while done.status not in FINISHED and time.monotonic() < deadline:
                time.sleep(0.05)
                done = records.get(record.task_id)
            assert done.status is TaskStatus.FAILURE
            assert done.error is not None
            assert done.error.type == "Interrupted"
            assert client.get(f"race:runs:{record.task_id}") == "1"


def test_with_no_api_a_live_workers_heartbeat_restores_a_dead_peers_messages(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    """No monitor anywhere (TASKLANE_EXECUTOR=celery, or no api): a live worker's heartbeat
    restores the dead peer's messages once its heartbeat window passes."""
    client = records.client
    tasks = [records.create("celery_effect_unsafe", ["peer", 60.0], "heavy") for _ in range(2)]
    with CeleryWorker(
        redis_url, log_path=tmp_path / "peer.log", heartbeat_interval=HEARTBEAT, queues=["light"]
    ) as survivor:
        with CeleryWorker(
            redis_url, log_path=tmp_path / "doomed.log", heartbeat_interval=HEARTBEAT
        ) as doomed:
            for record in tasks:
                sender.send_task(
                    record.name, args=record.args, queue="heavy", task_id=record.task_id
                )
            wait_until(lambda: len(holders(client)) == 2, 20, "both messages held")
            doomed.kill()
        # The survivor consumes only `light`: the restored messages wait in `heavy`.
        wait_until(
            lambda: BROKER_LAYOUT.waiting(client, "heavy") == 2, 20, "restored by the survivor"
        )
        assert holders(client) == {}
        assert client.hlen(UNACKED) == 0
        # Its log says so (one sweep or two; the line may follow the push by a moment).
        wait_until(lambda: restored_in_log(survivor.log()) == 2, 10, "logged by the survivor")


def test_a_worker_restarted_under_the_same_name_restores_its_predecessors_messages(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    client = records.client
    tasks = [records.create("celery_effect_once", ["again", 1.0], "heavy") for _ in range(2)]
    with CeleryWorker(
        redis_url,
        log_path=tmp_path / "first.log",
        heartbeat_interval=30.0,  # nobody would call it dead for a long while
        hostname="pod-0@tasklane",
    ) as first:
        for record in tasks:
            sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)
        wait_until(lambda: len(holders(client)) == 2, 20, "both messages held")
        first.kill()
    with CeleryWorker(
        redis_url,
        log_path=tmp_path / "second.log",
        heartbeat_interval=30.0,
        hostname="pod-0@tasklane",
    ) as second:
        finished = records.wait([r.task_id for r in tasks], FINISHED, second, timeout=20)
        assert "restored 2 unacknowledged messages of the previous worker" in second.log()
    assert [r.status for r in finished] == [TaskStatus.SUCCESS] * 2
    assert client.get("again:effects") == "2"


def test_a_live_workers_messages_are_never_restored(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    client = records.client
    tasks = [records.create("celery_effect_unsafe", ["live", 5.0], "heavy") for _ in range(2)]
    before = recovered()
    with (
        CeleryWorker(
            redis_url, log_path=tmp_path / "live.log", heartbeat_interval=HEARTBEAT
        ) as worker,
        running_monitor(redis_url),
    ):
        for record in tasks:
            sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)
        wait_until(lambda: len(holders(client)) == 2, 20, "both messages held")
        held = holders(client)
        # Longer than the window and the grace, with the monitor sweeping every tick.
        deadline = time.monotonic() + 3.5 * HEARTBEAT
        while time.monotonic() < deadline:
            assert holders(client) == held
            assert BROKER_LAYOUT.waiting(client, "heavy") == 0
            time.sleep(0.1)
        assert worker.alive()
        finished = records.wait([r.task_id for r in tasks], FINISHED, worker, timeout=20)
        # The main process acks a moment after the pool child wrote the record.
        wait_until(lambda: not holders(client) and not client.hlen(UNACKED), 10, "both acked")

    assert [r.status for r in finished] == [TaskStatus.SUCCESS] * 2
    assert all(client.get(f"live:runs:{r.task_id}") == "1" for r in tasks)
    assert recovered() == before


def test_a_worker_whose_connections_drop_is_not_taken_for_dead(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    client = records.client
    # A body that never touches Redis (the blips would fail one that does); not idempotent,
    # so a take-over would end it FAILURE Interrupted instead of SUCCESS at its first attempt.
    tasks = [records.create("celery_sleep_terminable", [6.0], "heavy") for _ in range(2)]
    before = recovered()
    with (
        CeleryWorker(
            redis_url, log_path=tmp_path / "blip.log", heartbeat_interval=HEARTBEAT
        ) as worker,
        running_monitor(redis_url) as monitor,
    ):
        wait_until(
            lambda: any(w.connected for w in monitor.snapshot.workers), 10, "connection seen"
        )
        for record in tasks:
            sender.send_task(record.name, args=record.args, queue="heavy", task_id=record.task_id)
        wait_until(lambda: len(holders(client)) == 2, 20, "both messages held")
        for _ in range(2):  # network blips: every connection but the test's dropped
            client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            time.sleep(1.5)
        finished = records.wait([r.task_id for r in tasks], FINISHED, worker, timeout=30)

    assert [(r.status, r.attempts) for r in finished] == [(TaskStatus.SUCCESS, 1)] * 2, [
        r.error for r in finished
    ]
    assert recovered() == before
    assert not client.exists(KEYS.worker_evicted(worker.hostname))


def test_a_worker_is_not_taken_for_dead_across_a_redis_restart(tmp_path: Path) -> None:
    """Redis restarted (data kept) for longer than the heartbeat window: every connection
    closed and every beat is stale, yet nothing is restored: the monitor forgets connections
    seen on the previous server run, and no beat is judged older than the server's start."""
    server = RedisServer()
    server.start()
    records = Records(server.url)
    client = records.client
    sender = create_celery_app(Settings(celery_broker_url=server.url, redis_url=server.url))
    tasks = [records.create("celery_sleep_terminable", [8.0], "heavy") for _ in range(2)]
    before = recovered()
    try:
        with (
            CeleryWorker(
                server.url, log_path=tmp_path / "restart.log", heartbeat_interval=HEARTBEAT
            ) as worker,
            running_monitor(server.url) as monitor,
        ):
            wait_until(
                lambda: any(w.connected for w in monitor.snapshot.workers), 10, "connection seen"
            )
            for record in tasks:
                sender.send_task(
                    record.name, args=record.args, queue="heavy", task_id=record.task_id
                )
            wait_until(lambda: len(holders(client)) == 2, 20, "both messages held")
            server.stop(keep_data=True)
            time.sleep(3 * HEARTBEAT + 1)  # longer than the window
            server.start()
            finished = records.wait([r.task_id for r in tasks], FINISHED, worker, timeout=30)
            assert not client.exists(KEYS.worker_evicted(worker.hostname))
    finally:
        records.client.close()
        sender.close()
        server.cleanup()

    assert [(r.status, r.attempts) for r in finished] == [(TaskStatus.SUCCESS, 1)] * 2, [
        r.error for r in finished
    ]
    assert recovered() == before


def test_a_restored_message_is_what_kombus_own_restore_writes(redis_url: str) -> None:
    """Recovery puts a message back exactly as kombu's restore_by_tag does (same list, same
    end, same bytes), through a named direct exchange and to a priority sub-list too."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    queue = Queue("contract", Exchange("contract", type="direct"), routing_key="contract")
    options = {HOLDER_OPTION: "w@host", HOLDERS_KEY_OPTION: KEYS.unacked_holders}
    with Connection(redis_url, transport=TRANSPORT_PATH, transport_options=options) as conn:
        producer = conn.Producer()
        for priority in (7, 0, 7):
            producer.publish(
                {"n": priority},
                exchange=queue.exchange,
                routing_key="contract",
                declare=[queue],
                priority=priority,
                serializer="json",
            )
        channel = conn.default_channel
        received = [channel.basic_get("contract", no_ack=False) for _ in range(2)]
        assert all(message is not None for message in received)
        held = {key: client.hgetall(key) for key in (UNACKED, KEYS.unacked_holders)}
        names = ("contract", "contract\x06\x166")  # the base list (0) runs before 6
        waiting = client.lrange(names[1], 0, -1)
        assert len(held[KEYS.unacked_holders]) == 2
        assert len(waiting) == 1  # one 7 waits; the 0 and the other 7 are held

        results = []
        for restore in ("kombu", "tasklane"):
            client.delete(*names)
            client.rpush(names[1], *waiting)
            for key, entries in held.items():
                client.hset(key, mapping=entries)
            if restore == "kombu":
                for message in received:
                    channel.qos.restore_by_tag(message.delivery_tag)
            else:
                # w@host never beat: dead once Redis has been up for a whole window.
                redis_up_for_a_window(client)
                assert Recovery(KEYS, RULE).sweep(client, time.time()) == {"w@host": 2}
            results.append({name: client.lrange(name, 0, -1) for name in names})
            assert client.hlen(UNACKED) == 0
            assert holders(client) == {}
    client.close()
    assert results[0] == results[1]
    assert [len(results[0][name]) for name in names] == [1, 2]


def test_a_late_ack_of_a_fenced_worker_leaves_the_new_holders_message(redis_url: str) -> None:
    """A worker declared dead that acks late must not drop the entry of the worker that
    received the restored message since (same delivery tag)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    queue = Queue("fence", Exchange("fence", type="direct"), routing_key="fence")

    def connect(holder: str) -> Connection:
        options = {HOLDER_OPTION: holder, HOLDERS_KEY_OPTION: KEYS.unacked_holders}
        return Connection(redis_url, transport=TRANSPORT_PATH, transport_options=options)

    with connect("old@host") as old, connect("new@host") as new:
        old.Producer().publish(
            {"x": 1}, exchange=queue.exchange, routing_key="fence", declare=[queue]
        )
        first = old.default_channel.basic_get("fence", no_ack=False)
        redis_up_for_a_window(client)
        assert Recovery(KEYS, RULE).sweep(client, time.time()) == {"old@host": 1}
        second = new.default_channel.basic_get("fence", no_ack=False)
        assert second.delivery_tag == first.delivery_tag
        assert holders(client) == {first.delivery_tag: "new@host"}

        first.ack()  # the old worker's late ack

        assert holders(client) == {first.delivery_tag: "new@host"}
        assert client.hexists(UNACKED, first.delivery_tag)
        second.ack()
        assert holders(client) == {}
        assert client.hlen(UNACKED) == 0
    client.close()


def test_a_fenced_worker_that_reaches_redis_again_says_so(
    redis_url: str, records: Records, tmp_path: Path
) -> None:
    client = records.client
    with CeleryWorker(
        redis_url, log_path=tmp_path / "fenced.log", heartbeat_interval=HEARTBEAT
    ) as worker:
        client.set(KEYS.worker_evicted(worker.hostname), "1764700000.0")  # as the script does
        wait_until(lambda: "this worker was declared dead" in worker.log(), 10, "fence read")
        assert not client.exists(KEYS.worker_evicted(worker.hostname))  # read once


def test_a_worker_in_warm_shutdown_is_not_taken_for_dead_while_its_tasks_finish(
    redis_url: str, records: Records, sender: TasklaneCelery, tmp_path: Path
) -> None:
    """SIGTERM: Celery stops taking tasks and lets the running ones finish (a KEDA or kubectl
    scale-in). Its heartbeat must go on until they have: a worker that stops beating is dead to
    recovery, which would hand the running tasks' messages to another worker mid-run."""
    client = records.client
    seconds = 3 * HEARTBEAT + 3  # longer than the heartbeat window
    tasks = [records.create("celery_effect_unsafe", ["drain", seconds], "heavy") for _ in range(2)]
    with (
        running_monitor(redis_url),
        CeleryWorker(
            redis_url,
            log_path=tmp_path / "peer.log",
            heartbeat_interval=HEARTBEAT,
            queues=["light"],
        ),
    ):
        with CeleryWorker(
            redis_url, log_path=tmp_path / "draining.log", heartbeat_interval=HEARTBEAT
        ) as draining:
            for record in tasks:
                sender.send_task(
                    record.name, args=record.args, queue="heavy", task_id=record.task_id
                )
            running = [f"drain:runs:{r.task_id}" for r in tasks]
            wait_until(lambda: client.exists(*running) == 2, 20, "both bodies running")
            before = recovered()
            assert draining.terminate(timeout=30) == 0, draining.log()[-3000:]

        assert recovered() == before
        for record in tasks:
            done = records.get(record.task_id)
            assert done.status is TaskStatus.SUCCESS, done
            assert done.worker == draining.hostname
            assert client.get(f"drain:runs:{record.task_id}") == "1"
        # Nothing restored for the peer (which skips heavy).
        assert BROKER_LAYOUT.waiting(client, "heavy") == 0
        assert holders(client) == {}
        assert client.zscore(KEYS.workers, draining.hostname) is None  # gone once it exited
