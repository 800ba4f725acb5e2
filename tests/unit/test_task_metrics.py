"""The DESIGN.md §5 task and HTTP series, read from prometheus_client's registry after real
submits through the api and the in-process runner (no metric is set by the test itself).

Counters are process-wide and other tests also run tasks, so every assertion is on the change
across the test (`Delta`), with task names only this module uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.tasks import TaskStatus, task
from app.core.tasks.hooks import TaskMetrics
from app.core.tasks.models import TaskResult, utcnow
from app.main import create_app

RELEASE = threading.Event()


@task("metrics_ok")
async def metrics_ok(value: int) -> int:
    return value


@task("metrics_fail")
def metrics_fail() -> None:
    raise ValueError("always")


@task("metrics_retry_once", retries=1, backoff=0.01, backoff_max=0.01)
async def metrics_retry_once(marker: str) -> str:
    attempts = RETRY_ATTEMPTS.setdefault(marker, 0) + 1
    RETRY_ATTEMPTS[marker] = attempts
    if attempts == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt"


@task("metrics_hold")
def metrics_hold() -> str:
    RELEASE.wait(10)
    return "released"


RETRY_ATTEMPTS: dict[str, int] = {}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Sample values now, to compare with later: `delta(name, **labels)`."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.before = {
            (name, tuple(sorted(labels.items()))): sample(name, **labels) for name, labels in series
        }

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return sample(name, **labels) - self.before[key]


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(
        executor="background",
        store="memory",
        redis_url=None,
        celery_broker_url=None,
        scheduler="off",
        max_body_bytes=2048,
        task_modules=["tests.unit.test_task_metrics"],
    )
    RELEASE.clear()
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    RELEASE.set()


def submit(client: TestClient, name: str, *args: object) -> str:
    response = client.post("/api/tasks", json={"name": name, "args": list(args)})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def wait_final(client: TestClient, task_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        response = client.get(f"/api/tasks/{task_id}/status")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in ("SUCCESS", "FAILURE", "CANCELLED"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.01)


def test_submitted_finished_duration_and_queue_wait_are_counted_per_task(
    client: TestClient,
) -> None:
    ok, fail, bg = ("task", "metrics_ok"), ("task", "metrics_fail"), ("executor", "background")
    delta = Delta(
        ("tasklane_tasks_submitted_total", dict([ok, bg])),
        ("tasklane_tasks_submitted_total", dict([fail, bg])),
        ("tasklane_tasks_finished_total", dict([ok, bg, ("status", "SUCCESS")])),
        ("tasklane_tasks_finished_total", dict([fail, bg, ("status", "FAILURE")])),
        ("tasklane_task_duration_seconds_count", dict([ok, bg])),
        ("tasklane_task_queue_wait_seconds_count", dict([ok, bg])),
        ("tasklane_submit_duration_seconds_count", dict([bg])),
    )
    ids = [submit(client, "metrics_ok", i) for i in range(5)]
    ids += [submit(client, "metrics_fail") for _ in range(2)]
    for task_id in ids:
        wait_final(client, task_id)

    assert delta("tasklane_tasks_submitted_total", task="metrics_ok", executor="background") == 5
    assert delta("tasklane_tasks_submitted_total", task="metrics_fail", executor="background") == 2
    assert (
        delta(
            "tasklane_tasks_finished_total",
            task="metrics_ok",
            executor="background",
            status="SUCCESS",
        )
        == 5
    )
    assert (
        delta(
            "tasklane_tasks_finished_total",
            task="metrics_fail",
            executor="background",
            status="FAILURE",
        )
        == 2
    )
    assert (
        delta("tasklane_task_duration_seconds_count", task="metrics_ok", executor="background") == 5
    )
    assert (
        delta("tasklane_task_queue_wait_seconds_count", task="metrics_ok", executor="background")
        == 5
    )
    assert delta("tasklane_submit_duration_seconds_count", executor="background") == 7


def test_a_retried_task_counts_one_retry_two_attempts_and_waits_once(client: TestClient) -> None:
    labels = {"task": "metrics_retry_once", "executor": "background"}
    delta = Delta(
        ("tasklane_task_retries_total", {"task": "metrics_retry_once"}),
        ("tasklane_task_duration_seconds_count", labels),
        ("tasklane_task_queue_wait_seconds_count", labels),
        ("tasklane_tasks_finished_total", {**labels, "status": "SUCCESS"}),
    )
    body = wait_final(client, submit(client, "metrics_retry_once", "r1"))

    assert body["status"] == "SUCCESS"
    assert body["attempts"] == 2
    assert delta("tasklane_task_retries_total", task="metrics_retry_once") == 1
    assert delta("tasklane_task_duration_seconds_count", **labels) == 2  # per attempt
    assert delta("tasklane_task_queue_wait_seconds_count", **labels) == 1  # submit to 1st start
    assert delta("tasklane_tasks_finished_total", **labels, status="SUCCESS") == 1


def test_in_progress_rises_while_tasks_run_and_returns_to_where_it_was(
    client: TestClient,
) -> None:
    before = sample("tasklane_tasks_in_progress", executor="background")
    ids = [submit(client, "metrics_hold") for _ in range(3)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sample("tasklane_tasks_in_progress", executor="background") - before == 3:
            break
        time.sleep(0.02)
    assert sample("tasklane_tasks_in_progress", executor="background") - before == 3

    RELEASE.set()
    for task_id in ids:
        wait_final(client, task_id)
    assert sample("tasklane_tasks_in_progress", executor="background") == before


def test_a_pending_cancel_counts_as_finished_cancelled_without_touching_in_progress() -> None:
    hook = TaskMetrics()
    labels = {"task": "metrics_unit", "executor": "celery"}
    delta = Delta(
        ("tasklane_tasks_finished_total", {**labels, "status": "CANCELLED"}),
        ("tasklane_tasks_in_progress", {"executor": "celery"}),
    )
    record = TaskResult(
        task_id="t-cancel",
        name="metrics_unit",
        status=TaskStatus.CANCELLED,
        executor="celery",
        queue="light",
        finished_at=utcnow(),
    )
    hook.on_transition(record, TaskStatus.PENDING)

    assert delta("tasklane_tasks_finished_total", **labels, status="CANCELLED") == 1
    assert delta("tasklane_tasks_in_progress", executor="celery") == 0


def test_ending_an_attempt_started_by_another_process_never_drives_in_progress_negative() -> None:
    """The reaper settles a dead process's STARTED task: finished is counted here, in-progress
    is not decremented (this process never incremented it)."""
    hook = TaskMetrics()
    delta = Delta(("tasklane_tasks_in_progress", {"executor": "background"}))
    started = utcnow()
    record = TaskResult(
        task_id="t-reaped",
        name="metrics_unit",
        status=TaskStatus.FAILURE,
        executor="background",
        queue="light",
        started_at=started,
        finished_at=utcnow(),
        attempts=1,
    )
    hook.on_transition(record, TaskStatus.STARTED)
    assert delta("tasklane_tasks_in_progress", executor="background") == 0


def test_http_requests_are_labelled_by_route_template_and_status(client: TestClient) -> None:
    template = "/api/tasks/{task_id}/status"
    delta = Delta(
        ("http_requests_total", {"method": "GET", "handler": template, "status": "404"}),
        ("http_requests_total", {"method": "GET", "handler": "<unmatched>", "status": "404"}),
        ("http_requests_total", {"method": "POST", "handler": "<unmatched>", "status": "413"}),
        ("http_request_duration_seconds_count", {"method": "GET", "handler": template}),
    )
    for unknown in ("a-1", "b-2", "c-3"):
        assert client.get(f"/api/tasks/{unknown}/status").status_code == 404
    assert client.get("/no/such/path/12345").status_code == 404
    oversized = client.post(
        "/api/tasks", content=b"x" * 4096, headers={"content-type": "application/json"}
    )
    assert oversized.status_code == 413

    # Three different ids, one series: the label is the template, never the raw path.
    assert delta("http_requests_total", method="GET", handler=template, status="404") == 3
    assert delta("http_request_duration_seconds_count", method="GET", handler=template) == 3
    assert delta("http_requests_total", method="GET", handler="<unmatched>", status="404") == 1
    # Refused by BodySizeLimit before any route ran: counted, with its status.
    assert delta("http_requests_total", method="POST", handler="<unmatched>", status="413") == 1
    exposed = client.get("/metrics").text
    assert 'handler="/api/tasks/{task_id}/status"' in exposed
    assert "/api/tasks/a-1/status" not in exposed
