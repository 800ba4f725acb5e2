"""Task and resource ids are one clean URL path segment everywhere they enter (body, path,
TaskManager.submit); countdown is a number, not something that converts to one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.tasks import SubmitOptions, registry, task
from app.core.tasks.errors import InvalidTaskId
from app.core.tasks.models import ID_RULE
from app.main import create_app
from app.wiring import build_task_manager

DOT_SEGMENTS = [".", "..", "..."]
# httpx normalises "." and ".." out of a URL: percent-encoded, they reach the router as dots.
ENCODED_DOTS = ["%2E", "%2E%2E", ".%2E"]


def _add(a: int, b: int = 0) -> int:
    return a + b


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    task("test_ids_add")(_add)
    yield
    registry.unregister("test_ids_add")


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(store="memory", executor="background", scheduler="off", api_token=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def submit(client: TestClient, **body: Any) -> Any:
    return client.post("/api/tasks", json={"name": "test_ids_add", "args": [1], **body})


def messages(response: Any) -> str:
    return str(response.json()["detail"])


@pytest.mark.parametrize("task_id", [*DOT_SEGMENTS, "", "a/b", "a%2Fb", "tab\there", "x" * 129])
def test_a_task_id_that_is_not_one_clean_segment_is_422_naming_the_rule(
    client: TestClient, task_id: str
) -> None:
    response = submit(client, task_id=task_id)

    assert response.status_code == 422
    if task_id and len(task_id) <= 128:
        assert ID_RULE in messages(response)


@pytest.mark.parametrize("task_id", [".hidden", "a..b", "v1.2", "report:2024-05-01", "x" * 128])
def test_a_clean_task_id_is_accepted_and_its_status_url_reaches_it(
    client: TestClient, task_id: str
) -> None:
    response = submit(client, task_id=task_id)

    assert response.status_code == 202, response.text
    status = client.get(response.json()["status_url"])
    assert (status.status_code, status.json()["task_id"]) == (200, task_id)


@pytest.mark.parametrize("encoded", ENCODED_DOTS)
def test_dot_segment_ids_in_the_path_are_422(client: TestClient, encoded: str) -> None:
    status = client.get(f"/api/tasks/{encoded}/status")
    cancel = client.post(f"/api/tasks/{encoded}/cancel")

    assert (status.status_code, cancel.status_code) == (422, 422)
    assert ID_RULE in messages(status)


@pytest.mark.asyncio
@pytest.mark.parametrize("task_id", DOT_SEGMENTS)
async def test_the_manager_refuses_dot_segment_ids_from_code(task_id: str) -> None:
    manager = build_task_manager(Settings(store="memory", executor="background"))
    await manager.start()
    try:
        with pytest.raises(InvalidTaskId, match="not only dots"):
            await manager.submit("test_ids_add", 1, options=SubmitOptions(task_id=task_id))
    finally:
        await manager.stop(1.0)


@pytest.mark.parametrize("countdown", ["5", "5.0", True, False, [5], {"s": 5}])
def test_countdown_must_be_a_json_number(client: TestClient, countdown: Any) -> None:
    response = submit(client, countdown=countdown)

    assert response.status_code == 422
    assert "countdown" in messages(response)


@pytest.mark.parametrize("countdown", [0, 5, 0.5])
def test_countdown_numbers_are_accepted(client: TestClient, countdown: float) -> None:
    assert submit(client, countdown=countdown).status_code == 202


BAD_RESOURCE_IDS = ["x" * 10_000, "x" * 129, "..", ".", "has space", "a/b", ""]


@pytest.mark.parametrize("resource_id", BAD_RESOURCE_IDS)
def test_process_and_recalculate_share_one_resource_id_rule(
    client: TestClient, resource_id: str
) -> None:
    process = client.post("/process", json={"resource_id": resource_id})
    recalculate = client.post("/api/tasks/rating/recalculate", json={"resource_id": resource_id})

    assert (process.status_code, recalculate.status_code) == (422, 422)
    assert ID_RULE in messages(process)
    if resource_id and len(resource_id) <= 128:
        assert ID_RULE in messages(recalculate)


def test_a_longest_valid_resource_id_is_accepted_by_both(client: TestClient) -> None:
    resource_id = "r" * 128
    process = client.post("/process", json={"resource_id": resource_id})
    recalculate = client.post("/api/tasks/rating/recalculate", json={"resource_id": resource_id})

    assert (process.status_code, recalculate.status_code) == (202, 202)


@pytest.mark.parametrize("encoded", ENCODED_DOTS)
def test_dot_segment_resource_ids_in_the_path_are_422(client: TestClient, encoded: str) -> None:
    read = client.get(f"/api/resources/{encoded}")
    vote = client.post(f"/api/resources/{encoded}/votes", json={"user": "ada", "score": 5})

    assert (read.status_code, vote.status_code) == (422, 422)
    assert ID_RULE in messages(read)
