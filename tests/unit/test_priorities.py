"""Priorities at the edges: @task(priority=) and SubmitOptions(priority=) into the record, the
POST /api/tasks body (0-9, else 422 with a message), and the default for tasks that name none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.tasks import registry, task
from app.core.tasks.models import DEFAULT_PRIORITY, TaskResult, TaskStatus
from app.main import create_app


def _noop() -> None:
    """Does nothing: only where and in which order it runs matters here."""


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    task("test_prio_plain")(_noop)
    task("test_prio_urgent", priority=1)(_noop)
    yield
    registry.unregister("test_prio_plain")
    registry.unregister("test_prio_urgent")


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(store="memory", executor="background", scheduler="off", api_token=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _record(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 202, response.text
    record = client.get(f"/api/tasks/{response.json()['task_id']}/status")
    assert record.status_code == 200
    return dict(record.json())


@pytest.mark.parametrize(
    ("body", "priority"),
    [
        ({"name": "test_prio_plain"}, DEFAULT_PRIORITY),
        ({"name": "test_prio_urgent"}, 1),
        ({"name": "test_prio_urgent", "priority": 8}, 8),
        ({"name": "test_prio_plain", "priority": 0}, 0),
        ({"name": "test_prio_plain", "priority": 9}, 9),
    ],
)
def test_the_record_shows_the_call_s_priority_else_the_task_s_else_the_middle(
    client: TestClient, body: dict[str, Any], priority: int
) -> None:
    assert _record(client, body)["priority"] == priority


def test_the_default_is_a_middle_level() -> None:
    assert 0 < DEFAULT_PRIORITY < 9


@pytest.mark.parametrize("priority", [-1, 10, 4.5, "4", True, None])
def test_a_priority_outside_0_to_9_is_a_422_naming_the_field(
    client: TestClient, priority: object
) -> None:
    body = {"name": "test_prio_plain", "priority": priority}
    response = client.post("/api/tasks", json=body)
    if priority is None:  # null: "the task's own", like leaving it out
        assert response.status_code == 202
        return
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "priority"]
    assert error["msg"]


def test_the_task_list_shows_each_task_s_default_priority(client: TestClient) -> None:
    tasks = {t["name"]: t for t in client.get("/api/tasks/executors").json()["tasks"]}
    assert tasks["test_prio_urgent"]["priority"] == 1
    assert tasks["test_prio_plain"]["priority"] == DEFAULT_PRIORITY


@pytest.mark.parametrize("priority", [-1, 10, 2.0])
def test_task_refuses_a_priority_outside_0_to_9(priority: Any) -> None:
    with pytest.raises(ValueError, match="priority must be an integer from 0"):
        task("test_prio_bad", priority=priority)(_noop)
    assert "test_prio_bad" not in registry


def test_a_record_written_before_priorities_reads_without_one() -> None:
    stored = TaskResult(
        task_id="old", name="n", status=TaskStatus.PENDING, executor="celery", queue="light"
    ).to_dict()
    del stored["priority"]
    assert TaskResult.from_dict(stored).priority is None
