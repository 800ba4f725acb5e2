"""A dead worker is noticed through its closed heartbeat connection, before its heartbeat
window expires; a live worker that only lost its connection is never taken for dead.

Real redis-server and real `celery worker` processes; the WorkerMonitor runs in the test. The
assertions are about order, not durations: the monitor must call the pool dead while the last
heartbeat is still inside the liveness window (so the window cannot be what decided).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from app.core.tasks.monitor import WorkerMonitor, WorkerSnapshot
from app.core.tasks.presence import LivenessRule, WorkerInfo, WorkerKeys, heartbeat_client_name
from scripts.harness.celery_processes import CeleryWorker

pytestmark = pytest.mark.integration

HEARTBEAT = 2.0  # liveness window 6 s; a closed connection counts after 3 s


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def monitor_for(redis_url: str) -> WorkerMonitor:
    return WorkerMonitor(redis_url, heartbeat_interval=HEARTBEAT, interval=0.1)


@pytest.mark.asyncio
async def test_a_killed_pool_is_seen_dead_inside_its_heartbeat_window(
    redis_url: str, tmp_path: Path
) -> None:
    worker = CeleryWorker(redis_url, log_path=tmp_path / "worker.log", heartbeat_interval=HEARTBEAT)
    monitor = monitor_for(redis_url)
    try:
        await monitor.start()
        await wait_until(lambda: monitor.can_serve("heavy"), 10, "worker never seen")
        await wait_until(
            lambda: any(w.connected for w in monitor.snapshot.workers), 10, "no connection seen"
        )

        worker.kill()  # SIGKILL the main process and its pool children
        await wait_until(lambda: not monitor.can_serve("heavy"), 15, "dead pool never noticed")

        client = redis.Redis.from_url(redis_url, decode_responses=True)
        last_beat = client.zscore(WorkerKeys().workers, worker.hostname)
        client.close()
        assert last_beat is not None
        # Still inside the window: the heartbeats alone would call it live for a while yet.
        assert time.time() - last_beat < monitor.liveness
        (info,) = monitor.snapshot.workers
        assert info.connected is False
    finally:
        await monitor.stop()
        worker.stop()


@pytest.mark.asyncio
async def test_a_live_worker_whose_connection_drops_stays_live(
    redis_url: str, tmp_path: Path
) -> None:
    worker = CeleryWorker(redis_url, log_path=tmp_path / "worker.log", heartbeat_interval=HEARTBEAT)
    monitor = monitor_for(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await monitor.start()
        await wait_until(
            lambda: any(w.connected for w in monitor.snapshot.workers), 10, "no connection seen"
        )
        name = heartbeat_client_name(worker.hostname)
        (conn,) = [c for c in client.client_list(_type="normal") if c.get("name") == name]
        client.client_kill_filter(_id=conn["id"])  # a network blip, the process lives on

        # Over more than two heartbeat intervals the worker never stops counting...
        deadline = time.monotonic() + 2.5 * HEARTBEAT
        while time.monotonic() < deadline:
            assert monitor.can_serve("heavy"), monitor.snapshot
            await asyncio.sleep(0.05)
        # ...and its next beat opened a new named connection.
        await wait_until(
            lambda: any(w.connected for w in monitor.snapshot.workers), 10, "never reconnected"
        )
    finally:
        await monitor.stop()
        worker.stop()
        client.close()


def test_closed_connection_counts_only_after_the_grace_and_unknown_never() -> None:
    now = time.time()
    snapshot = WorkerSnapshot(
        workers=(
            WorkerInfo(
                hostname="a",
                queues=("heavy",),
                concurrency=1,
                last_seen=now - 1,
                connected=False,
            ),  # may reconnect at its next beat
            WorkerInfo(
                hostname="b",
                queues=("heavy",),
                concurrency=1,
                last_seen=now - 4,
                connected=False,
            ),  # past the grace: dead
            WorkerInfo(
                hostname="c",
                queues=("heavy",),
                concurrency=1,
                last_seen=now - 4,
                connected=None,
            ),  # never seen (proxy): window only
        ),
        rule=LivenessRule(liveness=6.0, disconnect_grace=3.0),
    )
    assert [w.hostname for w in snapshot.live(now)] == ["a", "c"]
