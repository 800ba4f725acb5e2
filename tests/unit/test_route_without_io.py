"""Acceptance (issue 3): submit performs no network I/O to decide the route.

A real redis-server counts every command it serves (INFO commandstats). During 1000 routed
submits with the WorkerMonitor polling, the commands that read worker state grow with the
monitor's own ticks, never with the submits; with the server stopped, plan() still answers
1000 times from the cache.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import redis
from celery import Celery

from app.core.tasks import SubmitOptions, TaskManager
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.executors.base import Submission
from app.core.tasks.executors.celery import CeleryExecutor
from app.core.tasks.executors.hybrid import HybridExecutor
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.presence import WorkerKeys
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.memory import MemoryStore
from scripts.harness.processes import RedisServer

PREFIX = "test:"
KEYS = WorkerKeys(PREFIX)
SUBMITS = 1000
#: The monitor's polling interval here: short, so ticks happen during the submits.
INTERVAL = 0.05
#: Commands the monitor issues to read worker state and queue sizes.
MONITOR_COMMANDS = ("zrangebyscore", "hgetall", "llen", "zcard")

REGISTRY_ = TaskRegistry()


def _noop(i: int) -> int:
    return i


task("io_heavy", weight="heavy", target=REGISTRY_)(_noop)
task("io_light", target=REGISTRY_)(_noop)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command the server has served so far."""
    stats = client.info("commandstats")
    return {key.removeprefix("cmdstat_"): value["calls"] for key, value in stats.items()}


def delta(before: dict[str, int], after: dict[str, int], command: str) -> int:
    return after.get(command, 0) - before.get(command, 0)


@dataclass
class Plane:
    manager: TaskManager
    hybrid: HybridExecutor
    monitor: WorkerMonitor


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this module alone: no other test's client can add to its counts."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(own_redis: RedisServer) -> str:
    if own_redis.process is None:
        own_redis.start()
    own_redis.flush()
    return own_redis.url


@pytest_asyncio.fixture
async def plane(redis_url: str) -> AsyncIterator[Plane]:
    """Hybrid on a memory store: the only Redis traffic is the monitor's and Celery's."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.zadd(KEYS.workers, {"w1": time.time()})
    client.hset(KEYS.worker("w1"), mapping={"queues": "heavy", "concurrency": 4})
    client.close()
    store = MemoryStore(result_ttl=3600, max_records=5 * SUBMITS)
    queues = QueueRouting()
    monitor = WorkerMonitor(
        redis_url,
        prefix=PREFIX,
        heartbeat_interval=30,  # the written heartbeat stays live for the whole test
        interval=INTERVAL,
        queues=queues.queues(REGISTRY_),
    )
    celery_app = Celery("tasklane-test", broker=redis_url, set_as_current=False)
    celery_app.conf.update(task_serializer="json", accept_content=["json"])
    hybrid = HybridExecutor(
        BackgroundTasksExecutor(store, registry=REGISTRY_, concurrency=64),
        CeleryExecutor(celery_app, store, publish_timeout=5, queues=queues, registry=REGISTRY_),
        monitor,
        store=store,
        queues=queues,
        registry=REGISTRY_,
    )
    manager = TaskManager(store=store, executor=hybrid, registry=REGISTRY_)
    await manager.start()
    yield Plane(manager, hybrid, monitor)
    await hybrid.stop(grace=5)
    celery_app.close()


@pytest.mark.asyncio
async def test_thousand_routed_submits_read_worker_state_only_on_monitor_ticks(
    plane: Plane, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    ticks_before = plane.monitor.refreshes
    before = command_calls(client)
    started = time.monotonic()

    routes = []
    for i in range(SUBMITS):
        name = "io_heavy" if i % 2 else "io_light"
        task_id = await plane.manager.submit(name, i)
        routes.append((await plane.manager.get_result(task_id)).executor)
    await plane.monitor.stop()  # no tick after this point
    after = command_calls(client)
    elapsed = time.monotonic() - started
    ticks = plane.monitor.refreshes - ticks_before
    client.close()

    assert routes.count("celery") == SUBMITS // 2
    assert routes.count("background") == SUBMITS // 2
    assert delta(before, after, "lpush") == SUBMITS // 2  # the publishes themselves
    # Ticks are explained by the time spent, one per interval at most, not by the submits...
    assert 1 <= ticks <= elapsed / INTERVAL + 2
    # ...and each tick is one ZRANGEBYSCORE (a tick cancelled by stop() may have sent one more),
    # however many submits were routed meanwhile.
    assert ticks <= delta(before, after, "zrangebyscore") <= ticks + 1
    assert delta(before, after, "zrangebyscore") < SUBMITS // 2  # not one per celery route
    assert delta(before, after, "hgetall") <= ticks + 1  # one worker
    assert delta(before, after, "zcard") <= (ticks + 1) * len(plane.monitor.watched)
    # (LLEN is not counted here: kombu's queue declaration on a new publishing connection
    # sizes the queue with it too.)


@pytest.mark.asyncio
async def test_routes_without_any_redis_traffic_when_nothing_goes_to_celery(
    plane: Plane, redis_url: str
) -> None:
    """Every command Redis served during 1000 local submits is one of the monitor's reads."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    ticks_before = plane.monitor.refreshes
    before = command_calls(client)

    for i in range(SUBMITS):
        await plane.manager.submit("io_light", i)
    await plane.monitor.stop()
    after = command_calls(client)
    ticks = plane.monitor.refreshes - ticks_before
    client.close()

    changed = {command for command in after if delta(before, after, command)}
    assert changed <= {*MONITOR_COMMANDS, "info"}
    watched = len(plane.monitor.watched)
    assert delta(before, after, "zrangebyscore") <= ticks + 1
    assert delta(before, after, "hgetall") <= ticks + 1
    assert delta(before, after, "zcard") <= (ticks + 1) * watched
    assert delta(before, after, "llen") <= (ticks + 1) * watched * 4  # base + 3 priority lists


@pytest.mark.asyncio
async def test_route_answers_from_the_cache_with_redis_stopped(
    plane: Plane, own_redis: RedisServer
) -> None:
    heavy, light = (
        Submission(name, REGISTRY_.get(name), [1], {}, SubmitOptions())
        for name in ("io_heavy", "io_light")
    )
    assert plane.hybrid.plan(heavy).executor == "celery"
    own_redis.stop()
    try:
        started = time.monotonic()
        answers = {
            (plane.hybrid.plan(heavy).executor, plane.hybrid.plan(light).executor)
            for _ in range(SUBMITS)
        }
        elapsed = time.monotonic() - started
    finally:
        own_redis.start()

    assert answers == {("celery", "background")}
    # 2000 decisions; a single network round trip to a stopped server would fail, not be slow,
    # so this bound is only a sanity check, generous for a loaded machine.
    assert elapsed < 2.0
