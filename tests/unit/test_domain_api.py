"""/api/resources routes on a minimal app: validation is a 422, never a 500; every route, reads
included, needs the bearer token when one is configured; a vote schedules calculate_rating."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

import app.tasks  # noqa: F401 - registers calculate_rating
from app.api.auth import install_token_guard
from app.api.errors import install_error_handlers
from app.api.resources import router
from app.config import Settings
from app.core.tasks import TaskStatus
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.manager import TaskManager
from app.core.tasks.store.memory import MemoryStore
from app.tasks.data import DomainData, configure_domain_data

TOKEN = "s3cret-token"


@pytest_asyncio.fixture
async def manager() -> AsyncIterator[TaskManager]:
    store = MemoryStore(result_ttl=3600, max_records=1000)
    manager = TaskManager(store=store, executor=BackgroundTasksExecutor(store))
    await manager.start()
    yield manager
    await manager.stop(grace=1.0)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def data(request: pytest.FixtureRequest) -> AsyncIterator[DomainData]:
    if request.param == "memory":
        settings = Settings(store="memory")
    else:
        settings = Settings(store="redis", redis_url=request.getfixturevalue("redis_url"))
    backend = configure_domain_data(settings)
    assert backend is not None
    yield backend
    await backend.close()
    configure_domain_data(None)


def build_app(manager: TaskManager, token: str | None = None) -> FastAPI:
    app = FastAPI()
    app.state.settings = Settings(store="memory", api_token=token)
    app.state.manager = manager
    install_error_handlers(app)
    install_token_guard(app, app.state.settings)
    app.include_router(router)
    return app


@pytest_asyncio.fixture
async def client(manager: TaskManager, data: DomainData) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.asyncio
async def test_an_unknown_resource_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/resources/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


@pytest.mark.asyncio
async def test_a_vote_is_summarised_and_the_rating_recalculated(
    client: httpx.AsyncClient, manager: TaskManager, data: DomainData
) -> None:
    await client.post("/api/resources/r1/votes", json={"user": "ann", "score": 5})
    response = await client.post("/api/resources/r1/votes", json={"user": "bob", "score": 2})
    assert response.status_code == 201
    body = response.json()
    assert (body["resource_id"], body["votes"], body["average"]) == ("r1", 2, 3.5)
    record = await manager.wait(body["rating_task_id"], timeout=10)
    assert record.status is TaskStatus.SUCCESS
    resource = (await client.get("/api/resources/r1")).json()
    assert (resource["rating"], resource["votes"]) == (round(22 / 7, 4), 2)


@pytest.mark.asyncio
async def test_impressions_are_accepted_as_pending(
    client: httpx.AsyncClient, data: DomainData
) -> None:
    first = await client.post("/api/resources/r1/impressions")
    second = await client.post("/api/resources/r1/impressions", json={"count": 41})
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == {"resource_id": "r1", "recorded": 41}
    assert await data.pending_impressions() == {"r1": 42}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/resources/r1/votes", {"user": "ann", "score": 0}),
        ("/api/resources/r1/votes", {"user": "ann", "score": 6}),
        ("/api/resources/r1/votes", {"user": "ann", "score": "5"}),
        ("/api/resources/r1/votes", {"user": "ann", "score": True}),
        ("/api/resources/r1/votes", {"user": "ann", "score": 4.5}),
        ("/api/resources/r1/votes", {"user": "", "score": 3}),
        ("/api/resources/r1/votes", {"user": "u" * 129, "score": 3}),
        ("/api/resources/r1/votes", {"user": "ann", "score": 3, "extra": 1}),
        ("/api/resources/r1/votes", {"score": 3}),
        ("/api/resources/r1/impressions", {"count": 0}),
        ("/api/resources/r1/impressions", {"count": 10_001}),
        ("/api/resources/r1/impressions", {"count": "NaN"}),
        ("/api/resources/bad%20id/impressions", {"count": 1}),
        ("/api/resources/" + "r" * 129 + "/impressions", {"count": 1}),
    ],
)
async def test_bad_input_is_a_422(
    client: httpx.AsyncClient, data: DomainData, path: str, body: dict[str, object]
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert await data.pending_impressions() == {}
    assert await data.resource_ids() == []


@pytest.mark.asyncio
async def test_a_bad_resource_id_on_get_is_a_422(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/resources/a$b")).status_code == 422


@pytest.mark.asyncio
async def test_every_route_needs_the_token_when_one_is_set(
    manager: TaskManager, data: DomainData
) -> None:
    transport = httpx.ASGITransport(app=build_app(manager, token=TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        vote = {"user": "ann", "score": 4}
        assert (await client.post("/api/resources/r1/votes", json=vote)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        response = await client.post("/api/resources/r1/impressions", headers=wrong)
        assert response.status_code == 401
        assert await data.pending_impressions() == {}
        good = {"Authorization": f"Bearer {TOKEN}"}
        response = await client.post("/api/resources/r1/votes", json=vote, headers=good)
        assert response.status_code == 201
        assert (await client.get("/api/resources/r1")).status_code == 401  # reads too
        assert (await client.get("/api/resources/r1", headers=good)).status_code == 200
        await manager.wait(response.json()["rating_task_id"], timeout=10)
