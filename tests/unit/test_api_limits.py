"""Request bodies above TASKLANE_MAX_BODY_BYTES are refused with 413, declared or streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.limits import BodySizeLimit
from app.config import Settings
from app.main import create_app

LIMIT = 4096


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        store="memory", executor="background", scheduler="off", api_token=None, max_body_bytes=LIMIT
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _payload(size: int) -> bytes:
    padding = size - len(json.dumps({"name": "calculate_rating", "args": [""]}))
    return json.dumps({"name": "calculate_rating", "args": ["x" * padding]}).encode()


def test_body_at_the_limit_is_accepted(client: TestClient) -> None:
    body = _payload(LIMIT)
    assert len(body) == LIMIT

    response = client.post("/api/tasks", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 202


def test_declared_length_above_the_limit_is_413(client: TestClient) -> None:
    response = client.post(
        "/api/tasks", content=_payload(LIMIT + 1), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]


def test_streamed_body_above_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1024  # JSON whitespace: only the size can make this fail

    response = client.post(
        "/api/tasks", content=chunks(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]
    assert client.get("/api/tasks").json()["tasks"] == []


def test_oversized_process_body_is_413(client: TestClient) -> None:
    response = client.post("/process", json={"resource_id": "r", "pad": "x" * LIMIT})

    assert response.status_code == 413


@pytest.mark.asyncio
async def test_declared_length_is_refused_without_reading_the_body() -> None:
    called = False

    async def app(scope: object, receive: object, send: object) -> None:
        nonlocal called
        called = True

    async def receive() -> dict[str, object]:
        raise AssertionError("the body must not be read")

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-length", b"5000")],
    }
    await BodySizeLimit(app, max_bytes=LIMIT)(scope, receive, send)

    assert not called
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["detail"].startswith("Request body exceeds")


@pytest.mark.asyncio
async def test_streamed_overflow_outside_a_route_still_gets_413() -> None:
    # An app that reads the body itself, with no exception handler to turn the error into a
    # response: the middleware answers.
    async def app(scope: object, receive: object, send: object) -> None:
        while True:
            message = await receive()  # type: ignore[operator]
            if not message.get("more_body"):
                break

    messages = iter(
        [{"type": "http.request", "body": b"x" * 3000, "more_body": True}] * 2
        + [{"type": "http.request", "body": b"", "more_body": False}]
    )

    async def receive() -> dict[str, object]:
        return next(messages)

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await BodySizeLimit(app, max_bytes=LIMIT)({"type": "http", "headers": []}, receive, send)

    assert sent[0]["status"] == 413
