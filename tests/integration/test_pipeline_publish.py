"""Tasks whose Celery message tasklane encoded itself and pushed in the record's own Redis step
(executors/wire.py) run on a real `celery -A app.workers.celery_app worker`
(scripts.harness.celery_processes) exactly as send_task's messages do: arguments of every JSON
kind, keyword arguments, ETA from a countdown, retries re-published by the worker, and an
idempotent re-submit that sends nothing the worker could run twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from app.config import Settings
from app.core.tasks import TaskCall, TaskManager, TaskResult, TaskStatus
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.models import SubmitOptions
from app.wiring import build_task_manager
from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[CeleryWorker]:
    with CeleryWorker(redis_url, log_path=tmp_path / "worker.log") as started:
        yield started


def with_manager(redis_url: str, use: Callable[[TaskManager], Awaitable[T]]) -> T:
    """Run use(manager) with the api's manager of scaled mode: celery executor, redis store,
    the broker being the store's own Redis (so messages go out with their records)."""
    settings = Settings(
        executor="celery",
        store="redis",
        redis_url=redis_url,
        celery_broker_url=redis_url,
        task_modules=SAMPLE_TASK_MODULES.split(","),
        scheduler="off",
    )

    async def run() -> T:
        manager = build_task_manager(settings)
        await manager.start()
        try:
            assert manager.executor.describe()["publish"] == "with the record"
            return await use(manager)
        finally:
            await manager.stop(grace=0)

    return asyncio.run(run())


def wait_all(
    redis_url: str, task_ids: list[str], worker: CeleryWorker, timeout: float = 30
) -> list[TaskResult]:
    async def wait(manager: TaskManager) -> list[TaskResult]:
        return [await manager.wait(task_id, timeout=timeout) for task_id in task_ids]

    try:
        return with_manager(redis_url, wait)
    except TimeoutError:
        pytest.fail(f"tasks did not finish in {timeout} s\n{worker.log()[-4000:]}")


def test_tasks_sent_with_their_records_run_on_the_worker(
    worker: CeleryWorker, redis_url: str
) -> None:
    key = f'it\'s "quoted" \\ é✓ {uuid.uuid4().hex[:6]}'

    async def submit(manager: TaskManager) -> list[str]:
        single = await manager.submit("celery_add", 2, 3)
        batch = await manager.submit_many(
            [
                TaskCall("celery_add", [], {"a": 40, "b": 2}),
                TaskCall("celery_effect_once", [key, 0.0]),
                *(TaskCall("celery_add", [i, i]) for i in range(20)),
            ]
        )
        return [single, *batch]

    ids = with_manager(redis_url, submit)
    records = wait_all(redis_url, ids, worker)

    assert {(r.status, r.executor, r.worker, r.attempts) for r in records} == {
        (TaskStatus.SUCCESS, "celery", worker.hostname, 1)
    }
    assert [r.result for r in records] == [5, 42, 1, *(2 * i for i in range(20))]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.get(f"{key}:effects") == "1"  # the exact string reached the body
        assert BROKER_LAYOUT.waiting(client, "light") == BROKER_LAYOUT.waiting(client, "heavy") == 0
    finally:
        client.close()


def test_countdown_and_retries_work_like_send_task(worker: CeleryWorker, redis_url: str) -> None:
    async def submit(manager: TaskManager) -> list[str]:
        later = await manager.submit("celery_add", 1, 1, options=SubmitOptions(countdown=1.5))
        flaky = await manager.submit_many([TaskCall("celery_flaky", [2])])
        return [later, *flaky]

    ids = with_manager(redis_url, submit)
    later, flaky = wait_all(redis_url, ids, worker)

    assert (later.status, later.result) == (TaskStatus.SUCCESS, 2)
    assert later.started_at is not None
    assert (later.started_at - later.submitted_at).total_seconds() >= 1.4  # held to its ETA
    assert (flaky.status, flaky.attempts, flaky.result) == (TaskStatus.SUCCESS, 2, 2)
    # The retry was a new message the worker published from ours (self.retry).
    assert f"celery_flaky[{flaky.task_id}] retry: Retry in" in worker.log()


def test_an_idempotent_resubmit_sends_nothing_that_could_run_twice(
    worker: CeleryWorker, redis_url: str
) -> None:
    key = f"once-{uuid.uuid4().hex[:6]}"
    same = SubmitOptions(task_id=f"same-{uuid.uuid4().hex[:6]}")

    async def submit(manager: TaskManager) -> list[str]:
        first = await manager.submit("celery_effect_once", key, 0.5, options=same)
        again = await manager.submit("celery_effect_once", key, 0.5, options=same)
        batch = await manager.submit_many(
            [TaskCall("celery_effect_once", [key, 0.5], options=same)] * 3
        )
        return [first, again, *batch]

    ids = with_manager(redis_url, submit)
    [done] = wait_all(redis_url, sorted(set(ids)), worker)
    time.sleep(1.0)  # room for a second message to be taken, were there one

    assert done.status is TaskStatus.SUCCESS
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.get(f"{key}:runs:{same.task_id}") == "1"
        assert BROKER_LAYOUT.waiting(client, "heavy") == 0
    finally:
        client.close()
