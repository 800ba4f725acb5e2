"""The memory store is bounded by bytes (TASKLANE_MEMORY_STORE_MAX_BYTES) as well as by count:
finished records go first, oldest first; unfinished ones are never dropped, and a new record
that would not fit next to them is refused with StoreFull (503) before anything is written."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.tasks.errors import StoreFull
from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.store.memory import ROW_OVERHEAD, MemoryStore
from app.main import create_app

PAYLOAD = 100_000
#: Ten records of PAYLOAD characters fit (each is charged a little more), eleven do not.
BUDGET = 10 * (PAYLOAD + ROW_OVERHEAD + 100)


def record(task_id: str, status: TaskStatus = TaskStatus.PENDING) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        name="budget_task",
        status=status,
        executor="background",
        queue="light",
        args=["x" * PAYLOAD],
    )


def finish(current: TaskResult) -> TaskResult:
    return current.replace(status=TaskStatus.SUCCESS, result=len(current.args[0]))


async def ids(store: MemoryStore) -> list[str]:
    return sorted(r.task_id for r in await store.list(limit=1000))


@pytest.mark.asyncio
async def test_finished_records_are_dropped_oldest_first_when_bytes_run_out() -> None:
    store = MemoryStore(max_bytes=BUDGET)
    for n in range(10):
        await store.create(record(f"t-{n}"))
    for n in (3, 1, 5):
        await store.update(f"t-{n}", finish)

    for n in range(10, 12):
        await store.create(record(f"t-{n}"))

    # Two had to go: the oldest finished ones (t-1, t-3), never an unfinished one.
    assert await ids(store) == sorted(f"t-{n}" for n in (0, 2, 4, 5, 6, 7, 8, 9, 10, 11))
    assert await store.get("t-5") is not None


@pytest.mark.asyncio
async def test_a_big_result_makes_room_by_dropping_the_oldest_finished_record() -> None:
    store = MemoryStore(max_bytes=BUDGET)
    for n in range(10):
        await store.create(record(f"t-{n}"))
        if n < 9:
            await store.update(f"t-{n}", finish)

    await store.update("t-9", lambda r: r.replace(status=TaskStatus.SUCCESS, result="y" * PAYLOAD))

    assert await ids(store) == sorted(f"t-{n}" for n in range(1, 10))
    finished = await store.get("t-9")
    assert finished is not None
    assert finished.result == "y" * PAYLOAD


@pytest.mark.asyncio
async def test_a_record_that_does_not_fit_next_to_unfinished_ones_is_refused() -> None:
    store = MemoryStore(max_bytes=BUDGET)
    for n in range(10):
        await store.create(record(f"t-{n}"))

    with pytest.raises(StoreFull, match="TASKLANE_MEMORY_STORE_MAX_BYTES") as refused:
        await store.create_many([record("late-1"), record("late-2")])

    assert refused.value.http_status == 503
    assert await store.get("late-1") is None  # nothing of the batch was written
    assert len(await ids(store)) == 10
    # A finished task makes room again; re-submitting an existing id never needs any.
    await store.update("t-0", finish)
    assert (await store.create(record("late-1")))[1] is True
    assert (await store.create(record("t-5")))[1] is False


@pytest.mark.asyncio
async def test_updates_keep_the_charge_exact_and_the_rows_untracked() -> None:
    store = MemoryStore(max_bytes=BUDGET)
    for n in range(10):
        await store.create(record(f"t-{n}"))
        for fraction in (0.25, 0.5):
            await store.update(f"t-{n}", lambda r, f=fraction: r.replace(attempts=int(f * 4)))
        await store.update(f"t-{n}", finish)

    # Charged exactly as the same records written once: rewrites never count a row twice.
    fresh = MemoryStore(max_bytes=BUDGET)
    for kept in await store.list(limit=100):
        await fresh.create(kept)
    assert store._bytes == fresh._bytes
    assert store._unfinished_bytes == 0
    assert len(await ids(store)) == 10
    for _ in range(4):
        gc.collect()
    assert not any(gc.is_tracked(row) for row in store._records.values())


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        store="memory",
        executor="background",
        scheduler="off",
        api_token=None,
        memory_store_max_bytes=1_048_576,
        max_args_bytes=400_000,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_full_store_answers_503_with_retry_after_over_http(client: TestClient) -> None:
    body = {"name": "send_notification", "args": ["ann", "x" * 300_000], "countdown": 60}
    for _ in range(3):  # waiting (countdown): unfinished, so never dropped
        assert client.post("/api/tasks", json=body).status_code == 202

    response = client.post("/api/tasks", json=body)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "TASKLANE_MEMORY_STORE_MAX_BYTES=1048576" in response.json()["detail"]
    assert len(client.get("/api/tasks").json()["tasks"]) == 3


def test_a_budget_below_the_argument_limit_is_a_configuration_error() -> None:
    settings = Settings(store="memory", memory_store_max_bytes=1_048_576, max_args_bytes=2_000_000)
    with pytest.raises(ValueError, match=r"MEMORY_STORE_MAX_BYTES must be at least TASKLANE_MAX"):
        settings.check()
