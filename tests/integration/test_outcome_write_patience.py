"""The shared lifecycle (execute()) against a real redis-server that goes away mid-task.

A finished attempt's outcome exists only in the process that ran it. When the store does not
answer at that moment, execute() keeps the outcome and retries the write until it answers,
rather than giving up: a record left STARTED by a live owner is never reaped. The Celery worker
plane has the same check with a real worker in tests/integration/test_celery_worker.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from app.core.tasks.execution import Outcome, execute
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import TaskResult, TaskStatus, utcnow
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.redis import RedisStore
from scripts.harness.processes import RedisServer

pytestmark = pytest.mark.integration

REGISTRY = TaskRegistry()
RELEASE = threading.Event()


@task("patience_wait", target=REGISTRY)
def patience_wait() -> int:
    """Blocks until the test has taken the store away, then finishes."""
    if not RELEASE.wait(timeout=30):
        raise TimeoutError("never released")
    return 7


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is stopped and started again."""
    own = RedisServer()
    own.start()
    yield own
    own.cleanup()


@pytest_asyncio.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    backend = RedisStore(server.url, prefix="patience:")
    yield backend
    await backend.close()


async def _start_attempt(store: RedisStore) -> tuple[str, asyncio.Task[Outcome]]:
    """A PENDING record, then execute() until the body runs (record STARTED)."""
    RELEASE.clear()
    task_id = str(uuid.uuid4())
    record = TaskResult(
        task_id=task_id,
        name="patience_wait",
        status=TaskStatus.PENDING,
        executor="background",
        queue="light",
        submitted_at=utcnow(),
    )
    await store.create(record)
    attempt = asyncio.create_task(
        execute(task_id, registry=REGISTRY, store=store, executor="background", hooks=TaskHooks())
    )
    deadline = time.monotonic() + 10
    while (current := await store.get(task_id)) is None or current.status is not TaskStatus.STARTED:
        assert time.monotonic() < deadline, "the attempt never started"
        await asyncio.sleep(0.02)
    return task_id, attempt


@pytest.mark.asyncio
async def test_the_outcome_is_written_once_the_store_is_back(
    server: RedisServer, store: RedisStore
) -> None:
    task_id, attempt = await _start_attempt(store)

    await asyncio.to_thread(server.stop, keep_data=True)
    RELEASE.set()
    await asyncio.sleep(1.0)  # the body has returned; its final write is refused meanwhile
    assert not attempt.done()
    await asyncio.to_thread(server.start)

    outcome = await asyncio.wait_for(attempt, timeout=30)
    assert outcome.ran
    assert outcome.record is not None
    assert (outcome.record.status, outcome.record.result) == (TaskStatus.SUCCESS, 7)
    stored = await store.get(task_id)
    assert stored is not None
    assert (stored.status, stored.result, stored.attempts) == (TaskStatus.SUCCESS, 7, 1)


@pytest.mark.asyncio
async def test_a_cancel_ends_the_wait_and_leaves_the_record_to_the_reapers(
    server: RedisServer, store: RedisStore
) -> None:
    """The wait has no limit of its own: only the process stopping ends it (a runner's
    shutdown cancels the attempt). The record then still says STARTED under this owner,
    which is what the dead-runner reaper and the worker take-over settle."""
    task_id, attempt = await _start_attempt(store)

    await asyncio.to_thread(server.stop, keep_data=True)
    RELEASE.set()
    await asyncio.sleep(1.0)
    assert not attempt.done()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(attempt, timeout=5)

    await asyncio.to_thread(server.start)
    stored = await store.get(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.STARTED
