"""Acceptance: 1000 submits via BackgroundTasks, 1 in 10 raising: all 1000 records end SUCCESS
or FAILURE — through the real HTTP app (httpx ASGITransport, lifespan running) and through
TaskManager.submit(..., background_tasks=bt) with bt run the way Starlette runs it."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from fastapi import BackgroundTasks

from app.api.handoff import HandoffGuard
from app.config import Settings
from app.core.tasks import TaskManager, TaskResult, TaskStatus
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.store import ResultStore
from scripts.harness import sample_tasks

pytestmark = pytest.mark.integration

SUBMITS = 1000
BATCH = 50


def assert_one_in_ten_failed(records: dict[int, TaskResult | None]) -> None:
    assert len(records) == SUBMITS
    statuses = Counter(record.status if record else None for record in records.values())
    assert statuses == {TaskStatus.SUCCESS: 900, TaskStatus.FAILURE: 100}
    for i, record in records.items():
        assert record is not None
        if i % 10 == 0:
            assert record.error is not None, i
            assert record.error.type == "ValueError", i
        else:
            assert record.result == i * 2, i
        assert record.attempts == 1


@pytest.mark.asyncio
async def test_thousand_http_submits_all_end_success_or_failure() -> None:
    from app.main import create_app

    settings = Settings(
        executor="background",
        store="memory",
        scheduler="off",
        task_modules=[sample_tasks.__name__],
        api_token=None,
        log_level="WARNING",
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://tasklane") as client,
    ):
        ids: dict[int, str] = {}

        async def post(i: int) -> None:
            response = await client.post(
                "/api/tasks", json={"name": "sample_maybe_fail", "args": [i]}
            )
            assert response.status_code == 202, response.text
            ids[i] = response.json()["task_id"]

        for batch in range(0, SUBMITS, BATCH):  # BATCH requests in flight at a time
            await asyncio.gather(*(post(i) for i in range(batch, batch + BATCH)))
        manager: TaskManager = app.state.manager
        await manager.executor.wait_all(timeout=120)  # type: ignore[attr-defined]
        records = {i: await manager.get_result(task_id) for i, task_id in ids.items()}
        sample = await client.get(f"/api/tasks/{ids[10]}/status")

    assert len(set(ids.values())) == SUBMITS
    assert_one_in_ten_failed(records)
    assert sample.json()["status"] == "FAILURE"


@pytest.mark.asyncio
async def test_thousand_manager_submits_with_background_tasks_all_end_success_or_failure(
    store: ResultStore,
) -> None:
    executor = BackgroundTasksExecutor(store, concurrency=8)
    manager = TaskManager(store=store, executor=executor)
    await manager.start()
    ids: dict[int, str] = {}

    async def endpoint(scope: dict, receive: object, send: object) -> None:
        # What FastAPI does per request: a fresh BackgroundTasks, the handler, then the
        # background tasks once the response is out.
        i = scope["i"]
        background_tasks = BackgroundTasks()
        ids[i] = await manager.submit("sample_maybe_fail", i, background_tasks=background_tasks)
        await background_tasks()

    guard = HandoffGuard(endpoint)  # type: ignore[arg-type]
    try:
        for batch in range(0, SUBMITS, BATCH):
            await asyncio.gather(
                *(guard({"type": "http", "i": i}, None, None) for i in range(batch, batch + BATCH))  # type: ignore[arg-type]
            )
        await executor.wait_all(timeout=120)
        records = {i: await manager.get_result(task_id) for i, task_id in ids.items()}
        claims = await store.claims()
    finally:
        await executor.stop(grace=0)

    assert_one_in_ten_failed(records)
    assert claims == {}
