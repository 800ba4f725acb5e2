"""Rate-limited tasks on the in-process runner (memory store and real Redis): execute() asks
the limiter right before STARTED, a refused task waits for its ticket without its slot, its
record says until when, cancel and shutdown settle it, and a Redis outage makes it wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.tasks import TaskManager, TaskStatus
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.hooks import default_hooks
from app.core.tasks.rate_limits import Admission, Limiter, RateLimit, RateLimits, limiter_for
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store import ResultStore
from app.core.tasks.store.redis import RedisStore
from app.main import create_app
from scripts.harness.processes import RedisServer
from scripts.harness.rate_limit_run import most_starts_in_one_window

REGISTRY_UNDER_TEST = TaskRegistry()
RAN: list[str] = []


@task("rate_echo", rate_limit="20/s", target=REGISTRY_UNDER_TEST)
async def rate_echo(value: str) -> str:
    RAN.append(value)
    return value


@task("rate_slow", rate_limit="1/s", target=REGISTRY_UNDER_TEST)
async def rate_slow(value: str) -> str:
    RAN.append(value)
    return value


@task("rate_glacial", rate_limit="1/m", target=REGISTRY_UNDER_TEST)
async def rate_glacial(value: str) -> str:
    RAN.append(value)
    return value


@task("rate_free", target=REGISTRY_UNDER_TEST)
async def rate_free(value: str) -> str:
    RAN.append(value)
    return value


class CountingLimiter:
    """A limiter that counts the calls it passes on (to prove some tasks make none)."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner
        self.calls = 0

    async def admit(
        self, task: str, limit: RateLimit, task_id: str, *, returning: bool
    ) -> Admission:
        self.calls += 1
        return await self.inner.admit(task, limit, task_id, returning=returning)

    async def forget(self, task: str, task_id: str) -> None:
        await self.inner.forget(task, task_id)

    async def waiting(self, tasks: Iterable[str]) -> dict[str, int]:
        return await self.inner.waiting(tasks)


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


@pytest_asyncio.fixture
async def make_manager(store: ResultStore) -> AsyncIterator[Callable[..., TaskManager]]:
    built: list[TaskManager] = []

    def make(concurrency: int = 8, overrides: dict[str, RateLimit | None] | None = None):
        limits = RateLimits(CountingLimiter(limiter_for(store)), overrides)
        hooks = default_hooks()
        executor = BackgroundTasksExecutor(
            store,
            registry=REGISTRY_UNDER_TEST,
            hooks=hooks,
            concurrency=concurrency,
            rate_limits=limits,
        )
        manager = TaskManager(
            store=store,
            executor=executor,
            registry=REGISTRY_UNDER_TEST,
            hooks=hooks,
            rate_limits=limits,
        )
        built.append(manager)
        return manager

    yield make
    for manager in built:
        await manager.executor.stop(grace=0)


def _calls(manager: TaskManager) -> int:
    assert manager.rate_limits is not None
    limiter = manager.rate_limits.limiter
    assert isinstance(limiter, CountingLimiter)
    return limiter.calls


async def _one_waiting(
    make: Callable[..., TaskManager], name: str = "rate_slow", **options: Any
) -> tuple[TaskManager, Any]:
    """A started manager whose second `name` task waits for its slot; that waiting record."""
    manager = make(**options)
    await manager.start()
    await manager.submit(name, "first")
    second = await manager.submit(name, "second")
    return manager, await _until_rate_limited(manager, second)


async def _until_rate_limited(manager: TaskManager, task_id: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            record = await manager.get_result(task_id)
            if record is not None and record.rate_limited_until is not None:
                return record
            await asyncio.sleep(0.01)


def _deferrals(name: str) -> float:
    return REGISTRY.get_sample_value("tasklane_rate_limited_total", {"task": name}) or 0.0


@pytest.mark.asyncio
async def test_limited_starts_keep_to_the_rate_and_all_succeed(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    await manager.start()
    before = _deferrals("rate_echo")

    ids = [await manager.submit("rate_echo", str(n)) for n in range(25)]
    records = [await manager.wait(task_id, timeout=20) for task_id in ids]

    assert all(r.status is TaskStatus.SUCCESS for r in records)
    assert all(r.attempts == 1 and r.rate_limited_until is None for r in records)
    starts = [r.started_at for r in records if r.started_at is not None]
    # 20/s, burst 1: at most 21 starts in any one-second window (both ends of it count).
    assert most_starts_in_one_window(starts, 1.0) <= 21
    assert _deferrals("rate_echo") - before >= 24


@pytest.mark.asyncio
async def test_a_waiting_record_stays_pending_and_says_until_when(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager, waiting = await _one_waiting(make_manager)

    assert waiting.status is TaskStatus.PENDING
    assert waiting.attempts == 0
    assert waiting.rate_limited_until > waiting.submitted_at
    assert waiting.to_dict()["rate_limited_until"] == waiting.rate_limited_until.isoformat()
    done = await manager.wait(waiting.task_id, timeout=10)
    assert done.status is TaskStatus.SUCCESS
    assert done.rate_limited_until is None
    assert done.attempts == 1


@pytest.mark.asyncio
async def test_a_waiting_task_holds_no_runner_slot(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager, waiting = await _one_waiting(make_manager, "rate_glacial", concurrency=1)

    free = await manager.submit("rate_free", "free")
    free_done = await manager.wait(free, timeout=10)

    second_now = await manager.get_result(waiting.task_id)
    assert free_done.status is TaskStatus.SUCCESS
    assert second_now is not None
    assert second_now.status is TaskStatus.PENDING
    assert RAN == ["first", "free"]


@pytest.mark.asyncio
async def test_tasks_without_a_limit_never_ask_the_limiter(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager(overrides={"rate_slow": None})
    await manager.start()

    ids = [await manager.submit("rate_free", "a"), await manager.submit("rate_slow", "b")]
    for task_id in ids:
        assert (await manager.wait(task_id, timeout=10)).status is TaskStatus.SUCCESS

    assert _calls(manager) == 0


@pytest.mark.asyncio
async def test_cancel_while_waiting_ends_it_cancelled_and_uncounted(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager, waiting = await _one_waiting(make_manager, "rate_glacial")
    assert manager.rate_limits is not None
    limiter = manager.rate_limits.limiter
    assert await limiter.waiting(["rate_glacial"]) == {"rate_glacial": 1}

    assert await manager.cancel(waiting.task_id)

    record = await manager.wait(waiting.task_id, timeout=5)
    assert record.status is TaskStatus.CANCELLED
    assert record.attempts == 0
    assert await limiter.waiting(["rate_glacial"]) == {"rate_glacial": 0}
    runner = manager.executor
    assert isinstance(runner, BackgroundTasksExecutor)
    await runner.wait_all(timeout=5)  # its job is gone: nothing comes back at its ticket
    assert RAN == ["first"]


@pytest.mark.asyncio
async def test_shutdown_settles_a_waiting_task_as_interrupted(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager, waiting = await _one_waiting(make_manager, "rate_glacial")

    await manager.executor.stop(grace=5)

    record = await manager.get_result(waiting.task_id)
    assert record is not None
    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "Interrupted"
    assert manager.rate_limits is not None
    assert await manager.rate_limits.limiter.waiting(["rate_glacial"]) == {"rate_glacial": 0}


@pytest.mark.asyncio
async def test_the_gauge_reads_the_waiting_count(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager, _ = await _one_waiting(make_manager, "rate_glacial")
    assert manager.rate_limits is not None

    await manager.rate_limits.refresh_gauge(manager.registry)

    value = REGISTRY.get_sample_value("tasklane_rate_delayed", {"task": "rate_glacial"})
    assert value == 1.0


@pytest.mark.asyncio
async def test_with_redis_down_a_waiting_task_waits_then_runs_once_it_is_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url, prefix="test:")
    limits = RateLimits(limiter_for(store))
    executor = BackgroundTasksExecutor(
        store, registry=REGISTRY_UNDER_TEST, concurrency=4, rate_limits=limits
    )
    manager = TaskManager(
        store=store, executor=executor, registry=REGISTRY_UNDER_TEST, rate_limits=limits
    )
    await manager.start()
    try:
        await manager.submit("rate_slow", "first")
        second = await manager.submit("rate_slow", "second")
        await _until_rate_limited(manager, second)

        redis_server.stop(keep_data=True)
        await asyncio.sleep(2.5)  # past its ticket, with nothing to check against
        assert RAN == ["first"]  # it waited: a limit is never skipped
        redis_server.start()

        record = await manager.wait(second, timeout=15)
        assert record.status is TaskStatus.SUCCESS
        assert RAN == ["first", "second"]
    finally:
        if redis_server.process is None or redis_server.process.poll() is not None:
            redis_server.start()
        await manager.stop(grace=0)


def test_the_status_endpoint_shows_until_when_a_task_waits() -> None:
    settings = Settings(
        store="memory",
        executor="background",
        scheduler="off",
        api_token=None,
        task_modules=["scripts.harness.celery_sample_tasks"],
        rate_limits="celery_rate_limited=1/m",
    )
    with TestClient(create_app(settings)) as client:
        ids = [
            client.post("/api/tasks", json={"name": "celery_rate_limited", "args": [n]}).json()[
                "task_id"
            ]
            for n in range(2)
        ]
        deadline = time.monotonic() + 10
        while True:
            waiting = client.get(f"/api/tasks/{ids[1]}/status").json()
            if waiting["rate_limited_until"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)

        assert waiting["status"] == "PENDING"
        assert datetime.fromisoformat(waiting["rate_limited_until"]) > datetime.fromisoformat(
            waiting["submitted_at"]
        )
        assert client.get(f"/api/tasks/{ids[0]}/status").json()["rate_limited_until"] is None
