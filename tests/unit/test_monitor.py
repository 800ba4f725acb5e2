"""WorkerMonitor against a real redis-server: heartbeats written the way workers write them
(presence.py), liveness judged from the cache, queue lengths with priority sub-lists, and a
Redis outage that marks the broker down without raising and lets the worker view expire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import redis
from prometheus_client import REGISTRY

from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.presence import WorkerKeys, heartbeat_client_name
from scripts.harness.processes import RedisServer

PREFIX = "test:"
KEYS = WorkerKeys(PREFIX)
HEARTBEAT = 0.2  # a worker is live for 3 x 0.2 = 0.6 s after its last heartbeat


def beat(
    client: redis.Redis,
    hostname: str,
    queues: str = "heavy,light",
    concurrency: int = 4,
    at: float | None = None,
) -> None:
    """One heartbeat, as a worker writes it: ZSET score + hash with queues and concurrency."""
    client.zadd(KEYS.workers, {hostname: time.time() if at is None else at})
    client.hset(KEYS.worker(hostname), mapping={"queues": queues, "concurrency": concurrency})


def make_monitor(
    url: str, *, interval: float = 0.05, scale_from_zero: bool = False
) -> WorkerMonitor:
    return WorkerMonitor(
        url,
        prefix=PREFIX,
        heartbeat_interval=HEARTBEAT,
        interval=interval,
        scale_from_zero=scale_from_zero,
        queues=["light", "heavy"],
    )


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest_asyncio.fixture
async def monitor(redis_url: str) -> AsyncIterator[WorkerMonitor]:
    """A monitor that only refreshes when the test says so."""
    watcher = make_monitor(redis_url)
    yield watcher
    await watcher.stop()


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> float:
    """Poll predicate every 10 ms; returns the seconds it took, fails after `within` seconds."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.asyncio
async def test_live_heartbeat_serves_its_queues_after_one_refresh(
    monitor: WorkerMonitor, client: redis.Redis
) -> None:
    assert not monitor.can_serve("heavy")
    beat(client, "w1", queues="heavy", concurrency=3)
    beat(client, "w2", queues="heavy,light", concurrency=2)

    snapshot = await monitor.refresh()

    assert snapshot.broker_up
    assert monitor.can_serve("heavy")
    assert monitor.can_serve("light")
    assert monitor.live_workers("heavy") == 2
    assert monitor.live_workers("light") == 1
    assert not monitor.can_serve("audio")
    assert snapshot.concurrency("heavy", time.time()) == 5
    assert gauge("tasklane_workers_available", queue="heavy") == 2
    assert gauge("tasklane_broker_up") == 1


@pytest.mark.asyncio
async def test_stale_heartbeat_is_a_dead_worker(
    monitor: WorkerMonitor, client: redis.Redis
) -> None:
    beat(client, "gone", at=time.time() - 3 * HEARTBEAT - 0.5)

    await monitor.refresh()

    assert monitor.live_workers("heavy") == 0
    assert not monitor.can_serve("heavy")


@pytest.mark.asyncio
async def test_worker_expires_from_the_cache_without_another_read(
    monitor: WorkerMonitor, client: redis.Redis
) -> None:
    beat(client, "w1")
    await monitor.refresh()
    assert monitor.can_serve("heavy")

    # No refresh: liveness is judged against the clock when asked.
    elapsed = await wait_until(lambda: not monitor.can_serve("heavy"), within=5)

    assert elapsed <= 3 * HEARTBEAT + 0.5


@pytest.mark.asyncio
async def test_scale_from_zero_serves_every_queue_with_no_worker(redis_url: str) -> None:
    watcher = make_monitor(redis_url, scale_from_zero=True)
    await watcher.refresh()

    assert watcher.live_workers("heavy") == 0
    assert watcher.can_serve("heavy")
    assert watcher.can_serve("anything")
    await watcher.stop()


@pytest.mark.asyncio
async def test_new_worker_is_seen_within_one_polling_interval(
    redis_url: str, client: redis.Redis
) -> None:
    watcher = make_monitor(redis_url, interval=0.2)
    await watcher.start()
    try:
        assert not watcher.can_serve("heavy")
        refreshes_before = watcher.refreshes
        beat(client, "late-joiner", queues="heavy")

        await wait_until(lambda: watcher.can_serve("heavy"), within=5)

        # A refresh already in flight may have read just before the heartbeat; the next one
        # sees it.
        assert watcher.refreshes <= refreshes_before + 2
    finally:
        await watcher.stop()


@pytest.mark.asyncio
async def test_queue_length_sums_base_list_and_priority_sub_lists(
    monitor: WorkerMonitor, client: redis.Redis
) -> None:
    client.rpush("heavy", "m1", "m2")
    client.rpush("heavy:3", "p3")
    client.rpush("heavy:6", "p6a", "p6b")
    client.rpush("heavy:9", "p9")
    client.rpush("light", "l1")
    client.zadd(KEYS.active("heavy"), {"t1": 1.0, "t2": 2.0})
    assert BROKER_LAYOUT.queue_lists("heavy")[1:] == [
        "heavy:3",
        "heavy:6",
        "heavy:9",
    ]

    snapshot = await monitor.refresh()

    assert snapshot.queue_lengths["heavy"] == 6
    assert snapshot.queue_lengths["light"] == 1
    assert snapshot.active == {"light": 0, "heavy": 2}
    assert gauge("tasklane_queue_length", queue="heavy") == 6
    assert gauge("tasklane_queue_length", queue="light") == 1


@pytest.mark.asyncio
async def test_queues_reported_by_workers_are_measured_too(
    monitor: WorkerMonitor, client: redis.Redis
) -> None:
    beat(client, "w-audio", queues="audio")
    client.rpush("audio", "a1", "a2", "a3")

    await monitor.refresh()
    snapshot = await monitor.refresh()

    assert monitor.can_serve("audio")
    assert snapshot.queue_lengths["audio"] == 3


@pytest.mark.asyncio
async def test_worker_without_its_hash_is_live_but_serves_no_known_queue(
    monitor: WorkerMonitor, client: redis.Redis
) -> None:
    client.zadd(KEYS.workers, {"hashless": time.time()})

    snapshot = await monitor.refresh()

    assert [worker.hostname for worker in snapshot.live(time.time())] == ["hashless"]
    assert not monitor.can_serve("heavy")


@pytest.mark.asyncio
async def test_redis_outage_marks_broker_down_and_the_view_expires_then_recovers(
    redis_server: RedisServer, redis_url: str, client: redis.Redis
) -> None:
    watcher = make_monitor(redis_url, interval=0.05)
    beat(client, "w1", queues="heavy")
    await watcher.start()
    try:
        assert watcher.can_serve("heavy")
        assert watcher.broker_up

        redis_server.stop()
        await wait_until(lambda: not watcher.broker_up, within=5)
        assert gauge("tasklane_broker_up") == 0
        # The last view stays until the worker's liveness window closes, then expires.
        await wait_until(lambda: not watcher.can_serve("heavy"), within=5)
        ticks = watcher.refreshes
        await wait_until(lambda: watcher.refreshes >= ticks + 3, within=5)
        assert watcher._task is not None
        assert not watcher._task.done()

        redis_server.start()
        beat(redis_server.client(), "w1", queues="heavy")
        await wait_until(lambda: watcher.broker_up and watcher.can_serve("heavy"), within=10)
        assert gauge("tasklane_broker_up") == 1
    finally:
        await watcher.stop()
        if redis_server.process is None:
            redis_server.start()


@pytest.mark.asyncio
async def test_refresh_with_redis_unreachable_from_the_start_never_raises() -> None:
    from scripts.harness.processes import free_port

    watcher = make_monitor(f"redis://127.0.0.1:{free_port()}/0")

    snapshot = await watcher.refresh()

    assert not snapshot.broker_up
    assert not watcher.can_serve("heavy")
    await watcher.stop()


@pytest.mark.parametrize("yields", range(8))
@pytest.mark.asyncio
async def test_stop_right_after_a_redis_restart_ends_the_polling(
    redis_server: RedisServer, redis_url: str, yields: int
) -> None:
    """A cancel landing mid-reconnect must not be absorbed as a connection error."""
    watcher = make_monitor(redis_url, interval=0.02)
    await watcher.start()
    await asyncio.sleep(0.1)
    redis_server.stop()
    redis_server.start()
    for _ in range(yields):
        await asyncio.sleep(0)
    polling = watcher._task
    assert polling is not None

    await watcher.stop()

    assert polling.done()


@pytest.mark.asyncio
async def test_broker_in_another_redis_down_keeps_the_worker_view_fresh(
    redis_url: str, client: redis.Redis
) -> None:
    from scripts.harness.processes import free_port

    watcher = WorkerMonitor(
        redis_url,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        prefix=PREFIX,
        heartbeat_interval=HEARTBEAT,
        interval=0.05,
        queues=["heavy"],
    )
    beat(client, "w1", queues="heavy")

    snapshot = await watcher.refresh()

    assert not snapshot.broker_up
    assert snapshot.workers_fresh
    assert watcher.live_workers("heavy") == 1
    assert snapshot.active == {"heavy": 0}
    await watcher.stop()


@pytest.mark.asyncio
async def test_queue_lengths_come_from_the_broker_redis_when_it_is_another_one(
    redis_url: str, client: redis.Redis
) -> None:
    broker = RedisServer()
    broker.start()
    try:
        broker.client().rpush("heavy", "m1", "m2", "m3")
        client.rpush("heavy", "not-the-broker")
        watcher = WorkerMonitor(redis_url, broker_url=broker.url, prefix=PREFIX, queues=["heavy"])

        snapshot = await watcher.refresh()

        assert snapshot.broker_up
        assert snapshot.queue_lengths["heavy"] == 3
        await watcher.stop()
    finally:
        broker.cleanup()


@pytest.mark.asyncio
async def test_a_redis_restart_voids_the_closed_connections_seen_before_it(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Every connection closes when Redis restarts: that proves nothing about a worker, so a
    worker whose beat is past the closed-connection grace (but inside its window) stays live
    until its connection is seen again or its window ends."""
    watcher = WorkerMonitor(redis_url, prefix=PREFIX, heartbeat_interval=5.0, interval=1.0)
    heartbeat = redis.Redis.from_url(
        redis_url, decode_responses=True, client_name=heartbeat_client_name("w1")
    )
    try:
        beat(heartbeat, "w1", at=time.time() - 7)  # past the 6 s grace, inside the 15 s window
        await watcher.refresh()
        assert [w.connected for w in watcher.snapshot.workers] == [True]
        assert watcher.can_serve("heavy")

        redis_server.stop(keep_data=True)  # the heartbeat connection closes with it
        redis_server.start()
        # The first read finds its connection gone (no client retries); the next reads again.
        fresh = [(await watcher.refresh()).workers_fresh for _ in range(3)]
        assert fresh[-1], fresh

        assert [w.connected for w in watcher.snapshot.workers] == [None]
        assert watcher.can_serve("heavy")
    finally:
        heartbeat.close()
        await watcher.stop()
