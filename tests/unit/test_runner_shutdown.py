"""The runner's end of life: stop(grace) drains then settles the rest as FAILURE Interrupted,
and reap() settles the tasks of runners whose heartbeat expired (memory store and real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import scripts.harness.sample_tasks  # noqa: F401 - registers the sample_* tasks
from app.core.tasks import TaskManager, TaskResult, TaskStatus
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.models import SubmitOptions, utcnow
from app.core.tasks.store import ResultStore
from app.core.tasks.store.redis import RedisStore


@pytest_asyncio.fixture
async def executor(store: ResultStore) -> AsyncIterator[BackgroundTasksExecutor]:
    runner = BackgroundTasksExecutor(store, concurrency=9, heartbeat_interval=0.2)
    await runner.start()
    yield runner
    await runner.stop(grace=0)


def waiting_record(task_id: str, status: TaskStatus = TaskStatus.PENDING) -> TaskResult:
    started = utcnow() if status is TaskStatus.STARTED else None
    return TaskResult(
        task_id=task_id,
        name="sample_sleep_async",
        status=status,
        executor="background",
        queue="light",
        args=[1],
        attempts=1 if started else 0,
        started_at=started,
    )


async def wait_until_started(manager: TaskManager, ids: list[str]) -> None:
    async with asyncio.timeout(10):
        for task_id in ids:
            while True:
                record = await manager.get_result(task_id)
                if record is not None and record.status is TaskStatus.STARTED:
                    break
                await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_stop_drains_then_settles_every_unfinished_task_as_interrupted(
    store: ResultStore, executor: BackgroundTasksExecutor
) -> None:
    manager = TaskManager(store=store, executor=executor)
    cooperative = [await manager.submit("sample_sleep_sync", 30) for _ in range(3)]
    blocking = [await manager.submit("sample_block_sync", 6) for _ in range(2)]
    asynchronous = [await manager.submit("sample_sleep_async", 30) for _ in range(3)]
    quick = [await manager.submit("sample_sleep_async", 0.05) for _ in range(2)]
    delayed = [
        await manager.submit("sample_sleep_async", 0.01, options=SubmitOptions(countdown=60))
        for _ in range(2)
    ]
    running = cooperative + blocking + asynchronous
    await wait_until_started(manager, running)
    # Only one of the 9 slots is free: at least three of these wait for a slot at stop().
    queued = [await manager.submit("sample_sleep_async", 30) for _ in range(4)]

    began = time.monotonic()
    await manager.executor.stop(grace=0.5)
    took = time.monotonic() - began

    records = {tid: await store.get(tid) for tid in running + quick + delayed + queued}
    statuses = {tid: record.status for tid, record in records.items() if record is not None}
    assert len(statuses) == len(records)
    assert {statuses[tid] for tid in quick} == {TaskStatus.SUCCESS}
    interrupted = running + delayed + queued
    assert {statuses[tid] for tid in interrupted} == {TaskStatus.FAILURE}
    for tid in interrupted:
        record = records[tid]
        assert record is not None
        assert record.error is not None
        assert record.error.type == "Interrupted"
        assert record.finished_at is not None
    # The blocking threads ignore the stop, yet they do not hold it (they would for 6 s).
    assert took < 4.5
    assert await store.claims() == {}
    assert await store.live_runners([executor.runner_id]) == set()


@pytest.mark.asyncio
async def test_interrupted_record_is_not_overwritten_by_the_late_finish(
    store: ResultStore, executor: BackgroundTasksExecutor
) -> None:
    manager = TaskManager(store=store, executor=executor)
    task_id = await manager.submit("sample_block_sync", 0.6)
    await wait_until_started(manager, [task_id])

    await executor.stop(grace=0)
    settled = await store.get(task_id)
    await asyncio.sleep(1.0)  # the thread returns meanwhile

    assert settled is not None
    assert settled.status is TaskStatus.FAILURE
    assert await store.get(task_id) == settled


@pytest.mark.asyncio
async def test_reap_settles_the_tasks_of_a_dead_runner_only(
    store: ResultStore, executor: BackgroundTasksExecutor
) -> None:
    await store.create(waiting_record("dead-pending"))
    await store.create(waiting_record("dead-started", TaskStatus.STARTED))
    await store.create(waiting_record("live-started", TaskStatus.STARTED))
    finished = waiting_record("dead-finished").replace(status=TaskStatus.SUCCESS, result=1)
    await store.create(finished)
    for task_id in ["dead-pending", "dead-started", "dead-finished"]:
        await store.claim(task_id, "dead-runner")  # never sent a heartbeat
    await store.heartbeat("live-runner", ttl=30)
    await store.claim("live-started", "live-runner")

    reaped = await executor.reap()

    assert reaped == 3
    for task_id in ["dead-pending", "dead-started"]:
        record = await store.get(task_id)
        assert record is not None
        assert record.status is TaskStatus.FAILURE
        assert record.error is not None
        assert record.error.type == "Interrupted"
        assert "dead-runner" in record.error.message
    assert await store.get("dead-finished") == finished
    live = await store.get("live-started")
    assert live is not None
    assert live.status is TaskStatus.STARTED
    assert await store.claims() == {"live-started": "live-runner"}


@pytest.mark.asyncio
async def test_reap_leaves_a_running_peers_tasks_alone_and_settles_them_once_it_dies(
    redis_url: str,
) -> None:
    # Two runners sharing one Redis, as two api replicas do.
    store_a = RedisStore(redis_url, prefix="peers:")
    store_b = RedisStore(redis_url, prefix="peers:")
    runner_a = BackgroundTasksExecutor(store_a, heartbeat_interval=0.2)
    runner_b = BackgroundTasksExecutor(store_b, heartbeat_interval=30)
    await runner_a.start()
    await runner_b.start()
    try:
        manager_a = TaskManager(store=store_a, executor=runner_a)
        task_id = await manager_a.submit("sample_sleep_async", 30)
        await wait_until_started(manager_a, [task_id])

        await asyncio.sleep(
            1.0
        )  # well past runner_a's 0.6 s heartbeat ttl: only renewals keep it live
        assert await runner_b.reap() == 0
        alive = await store_b.get(task_id)

        # runner_a "dies": no more heartbeats, its key gone.
        assert runner_a._keepalive is not None
        runner_a._keepalive.cancel()
        await store_a.forget_runner(runner_a.runner_id)
        assert await runner_b.reap() == 1
        reaped = await store_b.get(task_id)
    finally:
        await runner_b.stop(grace=0)
        await runner_a.stop(grace=0)
        await store_a.close()
        await store_b.close()

    assert alive is not None
    assert alive.status is TaskStatus.STARTED
    assert reaped is not None
    assert reaped.status is TaskStatus.FAILURE
    assert reaped.error is not None
    assert reaped.error.type == "Interrupted"


@pytest.mark.asyncio
async def test_start_on_a_shared_store_settles_tasks_left_by_a_dead_process(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url, prefix="restart:")
    await store.create(waiting_record("left-started", TaskStatus.STARTED))
    await store.claim("left-started", "previous-process")
    runner = BackgroundTasksExecutor(store)
    try:
        await runner.start()
        record = await store.get("left-started")
        claims = await store.claims()
    finally:
        await runner.stop(grace=0)
        await store.close()

    assert record is not None
    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "Interrupted"
    assert claims == {}


@pytest.mark.asyncio
async def test_stop_does_not_wait_out_the_grace_for_tasks_still_in_their_countdown(
    store: ResultStore,
) -> None:
    runner = BackgroundTasksExecutor(store, concurrency=2)
    manager = TaskManager(store=store, executor=runner)
    await runner.start()
    delayed = await manager.submit("sample_sleep_async", 0.01, options=SubmitOptions(countdown=600))
    quick = await manager.submit("sample_sleep_async", 0.2)

    grace = 30.0
    began = time.monotonic()
    await runner.stop(grace=grace)
    elapsed = time.monotonic() - began

    # Only the running task is drained; the one still counting down is settled at once.
    assert elapsed < grace / 3
    assert (await manager.get_result(quick)).status is TaskStatus.SUCCESS
    record = await manager.get_result(delayed)
    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "Interrupted"
    assert await store.claims() == {}
