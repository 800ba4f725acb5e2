"""The submit path's shortcuts behave exactly like what they replace: the status URL built from
a cached prefix, cached metric label children, and a body framed by its declared
Content-Length passed through without wrappers."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request

from app.api.dependencies import status_url
from app.api.limits import BodySizeLimit
from app.config import Settings
from app.core.tasks.hooks import Children
from app.main import create_app


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings(store="memory", executor="background", scheduler="off"))


@pytest.mark.parametrize("root_path", ["", "/behind/a/proxy"])
@pytest.mark.parametrize("task_id", ["abc", "9f0c-uuid-like", "a.b:c_d-e"])
def test_status_url_is_what_url_path_for_gives(app: FastAPI, root_path: str, task_id: str) -> None:
    for _ in range(2):  # the first call fills the cache, the second reads it
        request = Request({"type": "http", "app": app, "root_path": root_path, "headers": []})

        url = status_url(request, task_id)

        assert url == f"{root_path}{app.url_path_for('task_status', task_id=task_id)}"


def test_label_children_are_prometheus_own() -> None:
    counter = Counter(
        "hot_path_total",
        "A counter of this test's own.",
        ["method", "status"],
        registry=CollectorRegistry(),
    )
    children = Children(counter)

    child = children("GET", "200")

    assert child is counter.labels(method="GET", status="200")
    assert children("GET", "200") is child


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def _send(message: dict[str, object]) -> None:
    return None


@pytest.mark.asyncio
async def test_a_body_framed_by_its_length_reaches_the_app_unwrapped() -> None:
    seen: list[object] = []

    async def inner(scope: object, receive: object, send: object) -> None:
        seen.extend([receive, send])

    scope = {"type": "http", "headers": [(b"content-length", b"2")]}
    await BodySizeLimit(inner, max_bytes=10)(scope, _receive, _send)

    assert seen == [_receive, _send]


@pytest.mark.asyncio
async def test_a_length_next_to_transfer_encoding_is_not_trusted() -> None:
    # Transfer-Encoding overrides Content-Length, so the body is counted as it streams in.
    chunks = iter([b"x" * 8, b"x" * 8, b""])

    async def receive() -> dict[str, object]:
        body = next(chunks)
        return {"type": "http.request", "body": body, "more_body": bool(body)}

    async def inner(scope: object, receive: object, send: object) -> None:
        while (await receive())["more_body"]:  # type: ignore[operator]
            pass

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [(b"content-length", b"2"), (b"transfer-encoding", b"chunked")]
    await BodySizeLimit(inner, max_bytes=10)({"type": "http", "headers": headers}, receive, send)

    assert sent[0]["status"] == 413
