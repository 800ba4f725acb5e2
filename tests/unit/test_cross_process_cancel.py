"""A cancel requested through another process (only the shared record changes) reaches a running
task at its next progress report: ctx.cancelled() turns true and the record ends CANCELLED."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.core.tasks import TaskContext, TaskManager, TaskStatus, task
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.store import ResultStore


@task("test_xcancel_reporting", takes_context=True)
def reporting(ctx: TaskContext) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ctx.progress(0.5, "working")
        ctx.raise_if_cancelled()
        time.sleep(0.02)
    return "never cancelled"


@pytest.mark.asyncio
async def test_cancel_flag_written_by_another_process_reaches_the_task(store: ResultStore) -> None:
    runner = BackgroundTasksExecutor(store)
    manager = TaskManager(store=store, executor=runner)
    task_id = await manager.submit("test_xcancel_reporting")
    async with asyncio.timeout(10):
        while True:  # polling the store, as a client of another process would
            if (await manager.get_result(task_id)).status is TaskStatus.STARTED:
                break
            await asyncio.sleep(0.01)

    # What another replica's manager does: it only changes the shared record.
    await store.update(task_id, lambda record: record.replace(cancel_requested=True))
    record = await manager.wait(task_id, timeout=10)
    await runner.stop(grace=1)

    assert record.status is TaskStatus.CANCELLED
