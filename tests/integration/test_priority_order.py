"""Priorities in both planes, on real redis-server: a priority-0 task submitted behind a backlog
of 50 low-priority ones starts before at most two more of them, on a `tasklane worker`
subprocess with concurrency 1 (kombu's priority sub-lists) and on the in-process runner with
TASKLANE_CONCURRENCY 1 (its priority gate). Start times are read from the task records."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scripts.harness.celery_processes import CeleryWorker
from scripts.harness.scaled_api import HEARTBEAT, api, status, wait_final, wait_for

pytestmark = pytest.mark.integration

BACKLOG = 50
TASK_SECONDS = 0.05
LOW, URGENT = 9, 0


@contextmanager
def worker_plane(redis_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str, list[Any]]]:
    """The hybrid api with one `tasklane worker` (concurrency 1) taking the heavy queue."""
    with (
        CeleryWorker(
            redis_url,
            log_path=tmp_path / "worker.log",
            queues=("heavy",),
            concurrency=1,
            heartbeat_interval=HEARTBEAT,
            launcher="tasklane",
        ),
        api(redis_url, scale_from_zero=True, log_level="WARNING") as client,
    ):
        yield client, "celery_effect_once", [f"prio-{uuid.uuid4().hex[:6]}", TASK_SECONDS]


@contextmanager
def in_process_plane(redis_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str, list[Any]]]:
    """The api in single mode on Redis, its runner limited to one task at a time."""
    with api(redis_url, executor="background", concurrency=1, log_level="WARNING") as client:
        yield client, "sample_sleep_async", [TASK_SECONDS]


def submitted(client: TestClient, name: str, args: list[Any], priority: int) -> str:
    body = {"name": name, "args": args, "priority": priority}
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def started(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["started_at"])


@pytest.mark.parametrize("plane", [worker_plane, in_process_plane], ids=["worker", "in-process"])
def test_a_priority_0_task_starts_before_at_most_two_more_of_a_low_priority_backlog(
    redis_url: str, tmp_path: Path, plane: Any
) -> None:
    with plane(redis_url, tmp_path) as (client, name, args):
        low = [submitted(client, name, args, LOW) for _ in range(BACKLOG)]
        # The backlog is being worked through when the urgent task arrives.
        wait_for(lambda: status(client, low[0])["status"] != "PENDING", 30, "the first started")
        urgent_id = submitted(client, name, args, URGENT)
        urgent = wait_final(client, urgent_id, timeout=60)
        backlog = [wait_final(client, task_id, timeout=60) for task_id in low]

    assert urgent["status"] == "SUCCESS"
    assert urgent["priority"] == URGENT
    assert {(record["status"], record["priority"]) for record in backlog} == {("SUCCESS", LOW)}
    arrived = datetime.fromisoformat(urgent["submitted_at"])
    overtook = [r for r in backlog if arrived < started(r) < started(urgent)]
    assert len(overtook) <= 2, [r["started_at"] for r in overtook]
    # It did jump a queue: most of the backlog was still waiting when it started.
    assert sum(started(r) > started(urgent) for r in backlog) >= BACKLOG // 2
    # First come, first served within a level.
    assert sorted(backlog, key=started) == backlog
