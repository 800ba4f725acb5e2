"""The ordering promise, seen on the raw ASGI messages: a task submitted with FastAPI's
BackgroundTasks starts only after the last response byte was sent, and a BackgroundTasks object
that a handler creates itself (and never returns) still gets its task run (HandoffGuard)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from fastapi import BackgroundTasks, FastAPI

from app.config import Settings
from app.core.tasks import TaskManager, get_task_manager, registry, task
from app.main import create_app


async def _mark(label: str) -> str:
    return label


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    task("test_handoff_mark")(_mark)
    yield
    registry.unregister("test_handoff_mark")


@pytest_asyncio.fixture
async def app() -> AsyncIterator[FastAPI]:
    application = create_app(
        Settings(store="memory", executor="background", scheduler="off", api_token=None)
    )

    @application.post("/test/own-background-tasks")
    async def own_background_tasks() -> dict[str, str]:
        background_tasks = BackgroundTasks()  # never returned to FastAPI, never run by it
        task_id = await get_task_manager().submit(
            "test_handoff_mark", "own", background_tasks=background_tasks
        )
        return {"task_id": task_id}

    async with application.router.lifespan_context(application):
        yield application


@dataclass
class Exchange:
    status: int = 0
    body: bytes = b""
    body_sent_at: datetime | None = None
    log: list[str] = field(default_factory=list)


async def call(app: FastAPI, path: str, payload: Any) -> Exchange:
    """One POST through the whole middleware stack, timing the final body message."""
    body = json.dumps(payload).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    exchange = Exchange()
    done = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        exchange.log.append(message["type"])
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            # A slow client: a task started at submit time would get the loop right here.
            await asyncio.sleep(0.1)
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")
            await asyncio.sleep(0.05)
            if not message.get("more_body", False):
                exchange.body_sent_at = datetime.now(UTC)
                done.set()

    await app(scope, receive, send)
    return exchange


def manager_of(app: FastAPI) -> TaskManager:
    return app.state.manager


@pytest.mark.asyncio
async def test_task_starts_only_after_the_response_body_was_sent(app: FastAPI) -> None:
    exchange = await call(app, "/api/tasks", {"name": "test_handoff_mark", "args": ["route"]})

    assert exchange.status == 202
    task_id = json.loads(exchange.body)["task_id"]
    record = await manager_of(app).wait(task_id, timeout=5)
    assert record.status == "SUCCESS"
    assert exchange.body_sent_at is not None
    assert record.started_at is not None
    assert record.started_at >= exchange.body_sent_at


@pytest.mark.asyncio
async def test_maintenance_task_starts_after_the_response(app: FastAPI) -> None:
    exchange = await call(app, "/api/tasks/cleanup/sessions", None)

    record = await manager_of(app).wait(json.loads(exchange.body)["task_id"], timeout=5)
    assert exchange.body_sent_at is not None
    assert record.started_at is not None
    assert record.started_at >= exchange.body_sent_at


@pytest.mark.asyncio
async def test_a_handlers_own_background_tasks_still_run(app: FastAPI) -> None:
    exchange = await call(app, "/test/own-background-tasks", None)

    assert exchange.status == 200
    record = await manager_of(app).wait(json.loads(exchange.body)["task_id"], timeout=5)
    assert record.status == "SUCCESS"
    assert record.result == "own"
    assert exchange.body_sent_at is not None
    assert record.started_at is not None
    assert record.started_at >= exchange.body_sent_at


@pytest.mark.asyncio
async def test_each_submission_in_one_request_runs(app: FastAPI) -> None:
    @app.post("/test/two-tasks")
    async def two_tasks(background_tasks: BackgroundTasks) -> list[str]:
        manager = get_task_manager()
        return [
            await manager.submit("test_handoff_mark", "a", background_tasks=background_tasks),
            await manager.submit("test_handoff_mark", "b", background_tasks=background_tasks),
        ]

    exchange = await call(app, "/test/two-tasks", None)

    results = [
        (await manager_of(app).wait(task_id, timeout=5)).result
        for task_id in json.loads(exchange.body)
    ]
    assert results == ["a", "b"]
