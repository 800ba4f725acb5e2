"""Helpers for scaled-mode tests: a hybrid api in-process (TestClient, lifespan included) over a
real redis-server, real Celery workers with short heartbeats, and polling on its endpoints."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.main import create_app
from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker

HEARTBEAT = 0.5  # workers and api agree: a worker is live for 1.5 s after its last beat
FINAL = {"SUCCESS", "FAILURE", "CANCELLED"}


def make_celery(broker_url: str) -> Celery:
    """A bare Celery app configured like the real one where publishing is concerned."""
    app = Celery("tasklane-test", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=1,
        broker_transport_options={
            **BROKER_LAYOUT.transport_options(),
            "socket_connect_timeout": 1,
            "socket_timeout": 1,
        },
    )
    return app


def api_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "executor": "hybrid",
        "store": "redis",
        "redis_url": redis_url,
        "celery_broker_url": redis_url,
        "worker_heartbeat_interval": HEARTBEAT,
        "monitor_interval": 0.2,
        "task_modules": SAMPLE_TASK_MODULES.split(","),
        "scheduler": "off",
        "api_token": None,
        "shutdown_grace": 2.0,
        **overrides,
    }
    return Settings(**values)


@contextmanager
def api(
    redis_url: str, *, raise_server_exceptions: bool = True, **overrides: Any
) -> Iterator[TestClient]:
    """The hybrid api; raise_server_exceptions=False lets a test assert on a 500 response."""
    app = create_app(api_settings(redis_url, **overrides))
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        yield client


def worker(redis_url: str, tmp_path: Path, **options: Any) -> CeleryWorker:
    name = f"worker-{uuid.uuid4().hex[:6]}"
    return CeleryWorker(
        redis_url, log_path=tmp_path / f"{name}.log", heartbeat_interval=HEARTBEAT, **options
    )


def post_task(client: TestClient, name: str, *args: Any) -> httpx.Response:
    return client.post("/api/tasks", json={"name": name, "args": list(args)})


def submit(client: TestClient, name: str, *args: Any) -> str:
    """Submit and expect it accepted; returns the task id."""
    response = post_task(client, name, *args)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def status(client: TestClient, task_id: str) -> dict[str, Any]:
    response = client.get(f"/api/tasks/{task_id}/status")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.05)


def wait_final(client: TestClient, task_id: str, timeout: float = 30) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def finished() -> bool:
        record.update(status(client, task_id))
        return record["status"] in FINAL

    wait_for(finished, timeout, f"task {task_id} finishing")
    return record


def executors(client: TestClient) -> dict[str, Any]:
    response = client.get("/api/tasks/executors")
    assert response.status_code == 200, response.text
    return response.json()


def route_now(client: TestClient, name: str) -> str:
    return next(entry["route"] for entry in executors(client)["tasks"] if entry["name"] == name)


def wait_route(client: TestClient, name: str, expected: str, timeout: float) -> float:
    """Seconds until GET /api/tasks/executors says `name` routes to `expected`."""
    started = time.monotonic()
    wait_for(lambda: route_now(client, name) == expected, timeout, f"{name} routed to {expected}")
    return time.monotonic() - started


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample of GET /metrics (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
