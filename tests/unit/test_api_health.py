"""/healthz answers while the loop runs; /readyz only while the store and executor can work."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.tasks.errors import StoreUnavailable
from app.main import create_app


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(store="memory", executor="background", scheduler="off", api_token=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_healthz_and_readyz_are_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_readyz_is_503_when_the_store_does_not_answer(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(client.app.state.manager.store, "ping", down)  # type: ignore[attr-defined]

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "connection refused" in response.json()["reason"]
    assert client.get("/healthz").status_code == 200


def test_readyz_is_503_when_the_store_hangs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang() -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr("app.api.health.PING_TIMEOUT", 0.05)
    monkeypatch.setattr(client.app.state.manager.store, "ping", hang)  # type: ignore[attr-defined]

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "did not answer" in response.json()["reason"]


def test_readyz_is_503_when_the_executor_stopped_accepting(client: TestClient) -> None:
    executor = client.app.state.manager.executor  # type: ignore[attr-defined]
    executor._accepting = False
    try:
        response = client.get("/readyz")
    finally:
        executor._accepting = True

    assert response.status_code == 503
    assert "not accepting" in response.json()["reason"]


def test_readyz_is_503_outside_the_lifespan() -> None:
    app = create_app(Settings(store="memory", executor="background", scheduler="off"))
    response = TestClient(app).get("/readyz")  # no `with`: the lifespan never ran

    assert response.status_code == 503
