"""The memory store keeps records where the cyclic GC does not scan them, and hands out copies."""

from __future__ import annotations

import gc

import pytest

from app.core.tasks.models import Progress, TaskError, TaskResult, TaskStatus
from app.core.tasks.store.memory import MemoryStore


def make_record(task_id: str) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        name="rows_task",
        status=TaskStatus.PENDING,
        executor="background",
        queue="light",
        args=[1, "two"],
        kwargs={"three": 3.0},
    )


@pytest.mark.asyncio
async def test_records_of_plain_values_are_not_tracked_by_the_gc() -> None:
    store = MemoryStore()
    await store.create(make_record("t-1"))
    await store.update(
        "t-1",
        lambda record: record.replace(
            status=TaskStatus.FAILURE,
            error=TaskError(type="ValueError", message="no", traceback="tb"),
            progress=Progress(fraction=0.5, message="half"),
        ),
    )
    # A pass may look at a row before its inner tuples; each level of nesting can take one.
    for _ in range(4):
        gc.collect()
    assert not any(gc.is_tracked(row) for row in store._records.values())


@pytest.mark.asyncio
async def test_returned_records_are_independent_copies() -> None:
    store = MemoryStore()
    original = make_record("t-1")
    await store.create(original)
    original.args.append("changed after create")
    first = await store.get("t-1")
    assert first is not None
    first.args.append("changed by a reader")
    first.kwargs["four"] = 4
    assert await store.get("t-1") == make_record("t-1").replace(submitted_at=first.submitted_at)
