"""TASKLANE_MAX_ARGS_BYTES: a submit whose arguments' JSON is longer is refused before anything is
stored (413 over HTTP, naming the variable); the audio WebSocket allows its own audio's size."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.api.ws import audio_args_bytes
from app.config import Settings
from app.core.tasks import (
    ArgumentsTooLarge,
    InvalidTaskArgs,
    SubmitOptions,
    TaskManager,
    task,
)
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.store.memory import MemoryStore
from app.main import create_app

LIMIT = 4096


def make_client(**overrides: Any) -> TestClient:
    values: dict[str, Any] = {
        "store": "memory",
        "executor": "background",
        "scheduler": "off",
        "api_token": None,
        "max_args_bytes": LIMIT,
        **overrides,
    }
    return TestClient(create_app(Settings(**values)))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def post(client: TestClient, message: str) -> Any:
    body = {"name": "send_notification", "args": ["ann", message]}
    return client.post("/api/tasks", json=body)


def args_json_length(message: str) -> int:
    return len(json.dumps([["ann", message], {}], separators=(",", ":")))


def test_arguments_at_the_limit_are_accepted(client: TestClient) -> None:
    message = "x" * (LIMIT - args_json_length(""))
    assert args_json_length(message) == LIMIT

    assert post(client, message).status_code == 202


def test_arguments_over_the_limit_get_413_naming_the_variable_and_store_nothing(
    client: TestClient,
) -> None:
    message = "x" * (LIMIT + 1 - args_json_length(""))

    response = post(client, message)

    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "TASKLANE_MAX_ARGS_BYTES=4096" in detail
    assert str(LIMIT + 1) in detail
    assert client.get("/api/tasks").json() == {"tasks": []}


def test_escaped_characters_count_as_written_in_the_json(client: TestClient) -> None:
    # 1,000 characters, 6,000 as ASCII-escaped JSON (what the Redis store writes).
    response = post(client, "é" * 1000)

    assert response.status_code == 413


@pytest.mark.asyncio
async def test_the_thorough_path_measures_the_same_way() -> None:
    """Non-plain arguments (a tuple here) take the JSON round trip: same limit, same size."""
    registry = TaskRegistry()

    @task("takes_anything", target=registry)
    async def takes_anything(value: object) -> None:
        return None

    store = MemoryStore()
    manager = TaskManager(
        store=store,
        executor=BackgroundTasksExecutor(store, registry=registry),
        registry=registry,
        max_args_bytes=LIMIT,
    )
    with pytest.raises(ArgumentsTooLarge) as refused:
        await manager.submit("takes_anything", {"big": "x" * LIMIT})
    assert isinstance(refused.value, InvalidTaskArgs)  # callers catching that still do
    with pytest.raises(InvalidTaskArgs, match="change in a JSON round-trip"):
        await manager.submit("takes_anything", ("small", "tuple"))
    # A caller that bounds its data itself may allow more for one call.
    allowed = SubmitOptions(max_args_bytes=2 * LIMIT)
    assert await manager.submit("takes_anything", {"big": "x" * LIMIT}, options=allowed)
    assert len(await store.list()) == 1
    await manager.stop(grace=0)


def receive_until_closed(ws: Any) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frames.append(ws.receive_json())
        except WebSocketDisconnect:
            return frames


def test_an_audio_session_larger_than_the_args_limit_is_accepted() -> None:
    audio = b"\x01\x02" * 8192  # 16 KiB of audio: ~22 KB of base64, over 4 KiB
    with (
        make_client(max_audio_bytes=64 * 1024) as client,
        client.websocket_connect("/ws/audio/big-audio") as ws,
    ):
        for start in range(0, len(audio), 1024):
            ws.send_bytes(audio[start : start + 1024])
        ws.send_json({"type": "end"})
        frames = receive_until_closed(ws)
    assert frames[-1]["type"] == "result"
    assert frames[-1]["status"] == "SUCCESS"


def test_the_audio_allowance_covers_the_largest_audio_in_any_chunking() -> None:
    limit = 3001
    audio = bytes(range(256)) * 12
    for frame in (1, 2, 3, 1000, limit):
        # As the WebSocket builds them: one base64 string per frame received.
        chunks = [base64.b64encode(audio[i : i + frame]).decode() for i in range(0, limit, frame)]
        # The longest resource id and user name, the name all escapes (\u00e9 each).
        args = ["r" * 128, chunks, "\u00e9" * 200]
        size = len(json.dumps([args, {}], separators=(",", ":")))
        assert size <= audio_args_bytes(limit, len(chunks))
