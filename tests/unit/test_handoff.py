"""Hand-offs (app.core.tasks.handoff): a task given background_tasks starts after the response
inside an HTTP request, at once anywhere else, exactly once, and never lost to a failing
background task or an unrun BackgroundTasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import pytest_asyncio
from fastapi import BackgroundTasks, FastAPI
from starlette.types import Message, Receive, Scope, Send

from app.api.handoff import HandoffGuard
from app.core.tasks import TaskManager, TaskStatus, get_task_manager, set_task_manager, task
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.handoff import Handoff, defer
from app.core.tasks.store.memory import MemoryStore


@task("test_handoff_child")
async def child(label: str) -> str:
    return label


@task("test_handoff_parent")
async def parent() -> str:
    """Fans out the way the migration guide's WebSocket example does: its own BackgroundTasks."""
    return await get_task_manager().submit(
        "test_handoff_child", "from-parent", background_tasks=BackgroundTasks()
    )


@pytest.fixture
def events() -> list[str]:
    return []


def recorder(events: list[str], label: str) -> Callable[[], None]:
    return lambda: events.append(label)


def guarded(app: FastAPI) -> FastAPI:
    app.add_middleware(HandoffGuard)
    return app


async def call(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path)


@pytest_asyncio.fixture
async def manager() -> AsyncIterator[TaskManager]:
    store = MemoryStore()
    built = TaskManager(store=store, executor=BackgroundTasksExecutor(store))
    await built.start()
    set_task_manager(built)
    yield built
    await built.executor.stop(grace=0)


def test_handoff_fires_at_most_once(events: list[str]) -> None:
    handoff = Handoff(recorder(events, "fired"))

    handoff.fire()
    handoff.fire()

    assert handoff.done
    assert events == ["fired"]


@pytest.mark.asyncio
async def test_handoff_awaited_by_starlette_fires_once(events: list[str]) -> None:
    handoff = Handoff(recorder(events, "fired"))

    await handoff()
    await handoff()
    handoff.fire()

    assert events == ["fired"]


@pytest.mark.asyncio
async def test_defer_outside_a_request_fires_at_once(events: list[str]) -> None:
    background_tasks = BackgroundTasks()

    defer(background_tasks, recorder(events, "fired"))
    fired_before_run = list(events)
    await background_tasks()

    assert fired_before_run == ["fired"]
    assert events == ["fired"]
    assert len(background_tasks.tasks) == 1


@pytest.mark.asyncio
async def test_defer_inside_a_request_waits_for_the_background_tasks_run(
    events: list[str],
) -> None:
    app = guarded(FastAPI())

    @app.post("/submit")
    async def submit(background_tasks: BackgroundTasks) -> dict[str, list[str]]:
        background_tasks.add_task(recorder(events, "user-before"))
        defer(background_tasks, recorder(events, "handoff"))
        background_tasks.add_task(recorder(events, "user-after"))
        return {"during_handler": list(events)}

    response = await call(app, "/submit")

    assert response.status_code == 200
    assert response.json() == {"during_handler": []}
    assert events == ["user-before", "handoff", "user-after"]


@pytest.mark.asyncio
async def test_guard_fires_handoffs_of_a_background_tasks_nothing_runs(
    events: list[str],
) -> None:
    app = guarded(FastAPI())

    @app.post("/own")
    async def own() -> dict[str, list[str]]:
        defer(BackgroundTasks(), recorder(events, "own-1"))  # never returned, never run
        defer(BackgroundTasks(), recorder(events, "own-2"))
        return {"during_handler": list(events)}

    response = await call(app, "/own")

    assert response.json() == {"during_handler": []}
    assert events == ["own-1", "own-2"]


@pytest.mark.asyncio
async def test_guard_fires_handoffs_of_a_request_that_failed(events: list[str]) -> None:
    app = guarded(FastAPI())

    @app.post("/crash")
    async def crash(background_tasks: BackgroundTasks) -> None:
        defer(background_tasks, recorder(events, "handoff"))
        raise RuntimeError("handler bug after submit")

    response = await call(app, "/crash")

    assert response.status_code == 500
    assert events == ["handoff"]


@pytest.mark.asyncio
async def test_every_handoff_fires_when_a_user_background_task_raises(
    events: list[str],
) -> None:
    app = guarded(FastAPI())

    def failing() -> None:
        events.append("user-failed")
        raise ValueError("user background task bug")

    @app.post("/mixed")
    async def mixed(background_tasks: BackgroundTasks) -> dict[str, bool]:
        defer(background_tasks, recorder(events, "handoff-1"))
        background_tasks.add_task(failing)
        defer(background_tasks, recorder(events, "handoff-2"))
        defer(background_tasks, recorder(events, "handoff-3"))
        return {"ok": True}

    response = await call(app, "/mixed")

    assert response.status_code == 200  # sent before the background tasks ran
    assert events == ["handoff-1", "user-failed", "handoff-2", "handoff-3"]


@pytest.mark.asyncio
async def test_defer_in_a_websocket_scope_fires_at_once(events: list[str]) -> None:
    seen_in_handler: list[str] = []

    async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
        defer(BackgroundTasks(), recorder(events, "handoff"))
        seen_in_handler.extend(events)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        return None

    await HandoffGuard(websocket_app)({"type": "websocket", "path": "/ws"}, receive, send)

    assert seen_in_handler == ["handoff"]  # no response to wait for: it fired inside the handler


@pytest.mark.asyncio
async def test_submitted_task_runs_although_a_user_background_task_raises(
    manager: TaskManager,
) -> None:
    app = guarded(FastAPI())

    def failing() -> None:
        raise ValueError("user background task bug")

    @app.post("/submit")
    async def submit(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(failing)
        task_id = await manager.submit("test_handoff_child", "x", background_tasks=background_tasks)
        return {"task_id": task_id}

    response = await call(app, "/submit")
    record = await manager.wait(response.json()["task_id"], timeout=10)

    assert record.status is TaskStatus.SUCCESS
    assert record.result == "x"


@pytest.mark.asyncio
async def test_task_submitted_from_a_task_started_by_a_request_still_runs(
    manager: TaskManager,
) -> None:
    app = guarded(FastAPI())

    @app.post("/fan-out")
    async def fan_out(background_tasks: BackgroundTasks) -> dict[str, str]:
        task_id = await manager.submit("test_handoff_parent", background_tasks=background_tasks)
        return {"task_id": task_id}

    response = await call(app, "/fan-out")
    parent_record = await manager.wait(response.json()["task_id"], timeout=10)
    assert parent_record.status is TaskStatus.SUCCESS

    # The parent ran after its request ended; its own hand-off must not wait for that request.
    child_record = await manager.wait(parent_record.result, timeout=5)

    assert child_record.status is TaskStatus.SUCCESS
    assert child_record.result == "from-parent"
