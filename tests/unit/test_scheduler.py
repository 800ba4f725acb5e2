"""LocalScheduler: one task per entry and slot with the id schedule:{entry}:{slot}, one record
even when two schedulers run the same slot, and one leader among schedulers sharing Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from app.core.tasks import TaskManager, TaskStatus, task
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.scheduler import LEASE, LocalScheduler, ScheduleEntry
from app.core.tasks.store.memory import MemoryStore
from app.core.tasks.store.redis import RedisStore

RUNS: list[tuple[str, int]] = []


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.clear()


@task("test_scheduler_tick")
async def tick(label: str, weight: int = 1) -> str:
    RUNS.append((label, weight))
    return label


ENTRIES = (
    ScheduleEntry(name="fast", task="test_scheduler_tick", every=10, args=("fast",)),
    ScheduleEntry(
        name="slow", task="test_scheduler_tick", every=60, args=("slow",), kwargs={"weight": 3}
    ),
)

# Slots ~31 years long: no boundary passes while a test runs.
RARE = (ScheduleEntry(name="rare", task="test_scheduler_tick", every=1e9, args=("rare",)),)


@pytest_asyncio.fixture
async def make_manager() -> AsyncIterator[Callable[[object], TaskManager]]:
    built: list[TaskManager] = []

    def make(store: object) -> TaskManager:
        manager = TaskManager(store=store, executor=BackgroundTasksExecutor(store))  # type: ignore[arg-type]
        built.append(manager)
        return manager

    yield make
    for manager in built:
        await manager.executor.stop(grace=0)
        await manager.store.close()


@pytest.mark.asyncio
async def test_run_due_submits_each_due_entry_once_per_slot(
    make_manager: Callable[[object], TaskManager],
) -> None:
    manager = make_manager(MemoryStore())
    scheduler = LocalScheduler(manager, ENTRIES)

    first = await scheduler.run_due(now=1200.0)  # fast slot 120, slow slot 20
    same_slot = await scheduler.run_due(now=1209.9)
    next_fast = await scheduler.run_due(now=1210.0)
    both_again = await scheduler.run_due(now=1260.0)
    await manager.executor.wait_all(timeout=10)

    assert first == ["schedule:fast:120", "schedule:slow:20"]
    assert same_slot == []
    assert next_fast == ["schedule:fast:121"]
    assert both_again == ["schedule:fast:126", "schedule:slow:21"]
    assert sorted(RUNS) == [("fast", 1)] * 3 + [("slow", 3)] * 2
    record = await manager.get_result("schedule:slow:20")
    assert record is not None
    assert record.status is TaskStatus.SUCCESS
    assert (record.args, record.kwargs) == (["slow"], {"weight": 3})


@pytest.mark.asyncio
async def test_started_scheduler_waits_one_interval_before_the_first_run(
    make_manager: Callable[[object], TaskManager],
) -> None:
    manager = make_manager(MemoryStore())
    scheduler = LocalScheduler(manager, RARE, tick=3600)
    await scheduler.start()
    try:
        submitted_now = await scheduler.run_due()
    finally:
        await scheduler.stop()

    assert submitted_now == []
    assert await manager.list() == []


@pytest.mark.asyncio
async def test_two_schedulers_running_the_same_slot_create_one_record(
    redis_url: str, make_manager: Callable[[object], TaskManager]
) -> None:
    first = make_manager(RedisStore(redis_url, prefix="sched:"))
    second = make_manager(RedisStore(redis_url, prefix="sched:"))
    entry = (ScheduleEntry(name="fast", task="test_scheduler_tick", every=10, args=("x",)),)

    ids = await asyncio.gather(
        LocalScheduler(first, entry, owner="api-1").run_due(now=5000.0),
        LocalScheduler(second, entry, owner="api-2").run_due(now=5000.0),
    )
    record = await first.wait("schedule:fast:500", timeout=10)
    await first.executor.wait_all(timeout=10)
    await second.executor.wait_all(timeout=10)

    assert ids == [["schedule:fast:500"], ["schedule:fast:500"]]
    assert record.status is TaskStatus.SUCCESS
    assert [r.task_id for r in await first.list()] == ["schedule:fast:500"]
    assert RUNS == [("x", 1)]


@pytest.mark.asyncio
async def test_only_one_of_two_schedulers_sharing_redis_leads(
    redis_url: str, make_manager: Callable[[object], TaskManager]
) -> None:
    schedulers = [
        LocalScheduler(
            make_manager(RedisStore(redis_url, prefix="lead:")),
            RARE,
            tick=0.05,
            lease_ttl=5,
            owner=owner,
        )
        for owner in ("api-1", "api-2")
    ]
    for scheduler in schedulers:
        await scheduler.start()
    try:
        await asyncio.sleep(0.4)  # several ticks each
        leading = [scheduler.leading for scheduler in schedulers]
        assert leading.count(True) == 1
        leader, follower = schedulers if leading[0] else schedulers[::-1]
        store = leader.manager.store
        # The leader releases the lease on stop; the follower takes over on its next tick.
        await leader.stop()
        async with asyncio.timeout(5):
            while True:
                if follower.leading:
                    break
                await asyncio.sleep(0.02)
        assert await store.acquire_lease(LEASE, leader.owner, ttl=5) is False
    finally:
        for scheduler in schedulers:
            await scheduler.stop()

    assert RUNS == []  # the next slot is years away: leading alone submits nothing


@pytest.mark.asyncio
async def test_an_entry_that_cannot_be_submitted_does_not_hold_back_the_others(
    make_manager: Callable[[object], TaskManager],
) -> None:
    manager = make_manager(MemoryStore())
    entries = (
        ScheduleEntry(name="unknown", task="test_scheduler_not_registered", every=10),
        ScheduleEntry(name="bad-args", task="test_scheduler_tick", every=10, args=(1,)),
        ScheduleEntry(name="good", task="test_scheduler_tick", every=10, args=("good",)),
    )
    scheduler = LocalScheduler(manager, entries)

    first = await scheduler.run_due(now=100.0)
    second = await scheduler.run_due(now=110.0)
    await manager.executor.wait_all(timeout=10)

    assert first == ["schedule:good:10"]
    assert second == ["schedule:good:11"]
    assert RUNS == [("good", 1), ("good", 1)]
