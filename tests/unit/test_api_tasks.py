"""The /api/tasks routes, the guide's maintenance triggers and POST /process, over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.tasks import ExecutorUnavailable, TaskContext, TaskResult, TaskStatus, registry, task
from app.core.tasks.models import DEFAULT_PRIORITY
from app.main import create_app

_release = threading.Event()


def _add(a: int, b: int = 0) -> int:
    return a + b


def _slow(ctx: TaskContext) -> str:
    # Waits for the test (or a cancel) instead of sleeping a fixed time.
    while not _release.wait(0.01):
        ctx.raise_if_cancelled()
    return "released"


def _fail() -> None:
    raise RuntimeError("boom")


def _echo(value: Any) -> Any:
    return value


TEST_TASKS = {
    "test_api_add": {"func": _add},
    "test_api_slow": {"func": _slow, "takes_context": True},
    "test_api_fail": {"func": _fail},
    "test_api_echo": {"func": _echo},
    "test_api_urgent": {"func": _echo, "priority": 1},
    "test_api_limited": {"func": _echo, "rate_limit": "10/s", "rate_burst": 3},
    "test_api_overridden": {"func": _echo, "rate_limit": "10/s"},
}


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    for name, spec in TEST_TASKS.items():
        task(
            name,
            takes_context=spec.get("takes_context", False),
            priority=spec.get("priority", DEFAULT_PRIORITY),
            rate_limit=spec.get("rate_limit"),
            rate_burst=spec.get("rate_burst", 1),
        )(spec["func"])
    yield
    for name in TEST_TASKS:
        registry.unregister(name)


@pytest.fixture
def client() -> Iterator[TestClient]:
    _release.clear()
    settings = Settings(store="memory", executor="background", scheduler="off", api_token=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    _release.set()


def wait_finished(client: TestClient, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/api/tasks/{task_id}/status").json()
        if record["status"] in ("SUCCESS", "FAILURE", "CANCELLED"):
            return record
        assert time.monotonic() < deadline, f"task {task_id} still {record['status']}"
        time.sleep(0.02)


def wait_status(client: TestClient, task_id: str, status: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/api/tasks/{task_id}/status").json()["status"] != status:
        assert time.monotonic() < deadline, f"task {task_id} never reached {status}"
        time.sleep(0.02)


# -- submit ----------------------------------------------------------------------------------


def test_submit_returns_202_and_the_task_runs(client: TestClient) -> None:
    response = client.post("/api/tasks", json={"name": "test_api_add", "args": [2, 3]})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "PENDING"
    assert body["status_url"] == f"/api/tasks/{body['task_id']}/status"
    record = wait_finished(client, body["task_id"])
    assert record["status"] == "SUCCESS"
    assert record["result"] == 5
    assert record["executor"] == "background"


def test_submit_with_kwargs_and_countdown(client: TestClient) -> None:
    response = client.post(
        "/api/tasks",
        json={"name": "test_api_add", "args": [1], "kwargs": {"b": 41}, "countdown": 0.05},
    )

    assert response.status_code == 202
    assert wait_finished(client, response.json()["task_id"])["result"] == 42


def test_resubmitting_a_task_id_returns_the_existing_record(client: TestClient) -> None:
    first = client.post("/api/tasks", json={"name": "test_api_add", "args": [1], "task_id": "t-1"})
    wait_finished(client, "t-1")
    again = client.post("/api/tasks", json={"name": "test_api_add", "args": [9], "task_id": "t-1"})

    assert first.status_code == again.status_code == 202
    assert again.json()["task_id"] == "t-1"
    assert again.json()["status"] == "SUCCESS"
    assert client.get("/api/tasks/t-1/status").json()["args"] == [1]


def test_unknown_task_name_is_404_naming_it(client: TestClient) -> None:
    response = client.post("/api/tasks", json={"name": "no_such_task"})

    assert response.status_code == 404
    assert "no_such_task" in response.json()["detail"]
    assert response.json()["error"] == "UnknownTaskError"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"name": "test_api_add"}, "missing a required argument"),
        ({"name": "test_api_add", "args": [1, 2, 3]}, "too many positional"),
        ({"name": "test_api_add", "args": ["5"]}, "'a'"),
        ({"name": "test_api_add", "args": [1], "kwargs": {"c": 1}}, "unexpected keyword"),
        ({"name": "test_api_add", "args": [1], "kwargs": {"name": 1}}, "unexpected keyword"),
        ({"name": "test_api_add", "args": [1], "kwargs": {"options": 1}}, "reserved"),
    ],
)
def test_bad_arguments_are_422_with_the_reason(
    client: TestClient, body: dict[str, Any], reason: str
) -> None:
    response = client.post("/api/tasks", json=body)

    assert response.status_code == 422
    assert response.json()["error"] == "InvalidTaskArgs"
    assert reason in response.json()["detail"]


def test_reserved_keyword_on_unknown_task_is_still_404(client: TestClient) -> None:
    response = client.post("/api/tasks", json={"name": "nope", "kwargs": {"name": 1}})

    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": 5},
        {"name": "test_api_add", "args": {"a": 1}},
        {"name": "test_api_add", "kwargs": [1]},
        {"name": "test_api_add", "args": [1], "task_id": "bad id/with spaces"},
        {"name": "test_api_add", "args": [1], "task_id": "x" * 129},
        {"name": "test_api_add", "args": [1], "countdown": -1},
        {"name": "test_api_add", "args": [1], "countdown": 86_401},
        {"name": "test_api_add", "args": [1], "unexpected": True},
    ],
)
def test_malformed_submit_bodies_are_422(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/api/tasks", json=body).status_code == 422


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "test_api_add", "args": [NaN, 1]}',
        b'{"name": "test_api_add", "args": [1e999, 1]}',
        b'{"name": NaN}',
        b'{"name": "test_api_add", "args": [1], "countdown": NaN}',
    ],
)
def test_values_json_cannot_carry_are_422(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/tasks", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[" * 100_000, b'{"name": "test_api_add", "args": [' + b"9" * 5000 + b"]}"],
)
def test_unparseable_bodies_are_4xx_not_500(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/tasks", content=raw, headers={"content-type": "application/json"})

    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"name": "\ud800"}',
        rb'{"name": "test_api_echo", "args": ["\ud800"]}',
        rb'{"name": "test_api_echo", "args": [{"\udfff": 1}]}',
        rb'{"name": "test_api_echo", "kwargs": {"\ud800": 1}}',
        b'{"name": "test_api_echo", "args": [' + b"[" * 150 + b"]" * 150 + b"]}",
    ],
)
def test_arguments_no_record_could_serve_are_422(client: TestClient, raw: bytes) -> None:
    # A lone surrogate or very deep nesting, once stored, would break every read of the record
    # and of the listing; they are refused at the door, and echoing them back does not crash.
    response = client.post("/api/tasks", content=raw, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert client.get("/api/tasks").status_code == 200


def test_unusual_records_already_in_the_store_are_still_served(client: TestClient) -> None:
    # submit() refuses such values now, but a record written by an older build or by hand
    # must not make the status endpoint or the listing fail.
    manager = client.app.state.manager  # type: ignore[attr-defined]
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    for task_id, value in (("deep-record", deep), ("odd-record", "\ud800")):
        record = TaskResult(
            task_id=task_id,
            name="test_api_echo",
            status=TaskStatus.SUCCESS,
            executor="background",
            queue="light",
            args=[value],
            result=value,
        )
        client.portal.call(manager.store.create, record)  # type: ignore[union-attr]

    assert client.get("/api/tasks/deep-record/status").status_code == 200
    assert client.get("/api/tasks/odd-record/status").json()["result"] == "\ud800"
    assert client.get("/api/tasks").status_code == 200


def test_process_refuses_a_lone_surrogate(client: TestClient) -> None:
    response = client.post(
        "/process",
        content=rb'{"resource_id": "\ud800"}',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 422


def test_executor_unavailable_is_503_with_retry_after(client: TestClient) -> None:
    manager = client.app.state.manager  # type: ignore[attr-defined]

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise ExecutorUnavailable("testing", retry_after=7)

    original = manager.executor.dispatch
    manager.executor.dispatch = refuse
    try:
        response = client.post(
            "/api/tasks", json={"name": "test_api_add", "args": [1], "task_id": "refused"}
        )
    finally:
        manager.executor.dispatch = original

    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"] == "ExecutorUnavailable"
    # The record is settled, never left PENDING.
    assert client.get("/api/tasks/refused/status").json()["status"] == "FAILURE"


# -- list, status, executors -----------------------------------------------------------------


def test_list_filters_by_status_and_name(client: TestClient) -> None:
    ok = client.post("/api/tasks", json={"name": "test_api_add", "args": [1]}).json()["task_id"]
    bad = client.post("/api/tasks", json={"name": "test_api_fail"}).json()["task_id"]
    wait_finished(client, ok)
    wait_finished(client, bad)

    everything = client.get("/api/tasks").json()["tasks"]
    failures = client.get("/api/tasks", params={"status": "FAILURE"}).json()["tasks"]
    adds = client.get("/api/tasks", params={"name": "test_api_add", "limit": 1}).json()["tasks"]

    assert [record["task_id"] for record in everything] == [bad, ok]
    assert [record["task_id"] for record in failures] == [bad]
    assert failures[0]["error"]["type"] == "RuntimeError"
    assert [record["task_id"] for record in adds] == [ok]


@pytest.mark.parametrize(
    "params",
    [{"status": "DONE"}, {"status": "pending"}, {"limit": 0}, {"limit": 501}, {"limit": "x"}],
)
def test_list_rejects_bad_query_parameters(client: TestClient, params: dict[str, Any]) -> None:
    assert client.get("/api/tasks", params=params).status_code == 422


def test_status_of_unknown_id_is_404_never_pending(client: TestClient) -> None:
    response = client.get("/api/tasks/never-submitted/status")

    assert response.status_code == 404
    assert response.json()["detail"].startswith("No task with id 'never-submitted'")


@pytest.mark.parametrize("task_id", ["bad id", "a" * 129, "semi;colon"])
def test_malformed_task_id_in_path_is_422(client: TestClient, task_id: str) -> None:
    assert client.get(f"/api/tasks/{task_id}/status").status_code == 422
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 422


def test_executors_describes_mode_store_and_routes(client: TestClient) -> None:
    body = client.get("/api/tasks/executors").json()

    assert (body["mode"], body["executor"], body["store"]) == ("single", "background", "memory")
    assert body["executors"][0]["name"] == "background"
    assert body["executors"][0]["accepting"] is True
    tasks = {entry["name"]: entry for entry in body["tasks"]}
    assert tasks["test_api_add"]["route"] == "background"
    assert tasks["process_speak_audio"]["weight"] == "heavy"
    assert tasks["process_speak_audio"]["queue"] == "heavy"


def test_executors_shows_the_rate_limit_in_force_override_first() -> None:
    """The declared limit, or TASKLANE_RATE_LIMITS' override of it ("off" lifts it)."""
    settings = Settings(
        store="memory",
        executor="background",
        scheduler="off",
        api_token=None,
        rate_limits="test_api_overridden=off,test_api_echo=100/m",
    )
    with TestClient(create_app(settings)) as test_client:
        body = test_client.get("/api/tasks/executors").json()
    tasks = {entry["name"]: entry for entry in body["tasks"]}

    assert (tasks["test_api_limited"]["rate_limit"], tasks["test_api_limited"]["rate_burst"]) == (
        "10/s",
        3,
    )
    assert tasks["test_api_overridden"]["rate_limit"] is None
    assert (tasks["test_api_echo"]["rate_limit"], tasks["test_api_echo"]["rate_burst"]) == (
        "100/m",
        1,
    )
    assert tasks["test_api_add"]["rate_burst"] is None


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_running_task_requests_a_stop(client: TestClient) -> None:
    task_id = client.post("/api/tasks", json={"name": "test_api_slow"}).json()["task_id"]
    wait_status(client, task_id, "STARTED")

    response = client.post(f"/api/tasks/{task_id}/cancel")

    assert response.status_code == 200
    assert response.json() == {
        "task_id": task_id,
        "cancelled": True,
        "outcome": "requested",
        "status": "STARTED",
    }
    assert wait_finished(client, task_id)["status"] == "CANCELLED"


def test_cancel_waiting_task_cancels_it(client: TestClient) -> None:
    body = {"name": "test_api_add", "args": [1], "countdown": 60}
    task_id = client.post("/api/tasks", json=body).json()["task_id"]

    response = client.post(f"/api/tasks/{task_id}/cancel")

    assert response.status_code == 200
    assert response.json()["outcome"] == "cancelled"
    assert response.json()["status"] == "CANCELLED"
    assert client.get(f"/api/tasks/{task_id}/status").json()["status"] == "CANCELLED"


def test_cancel_unknown_is_404_and_finished_is_409(client: TestClient) -> None:
    task_id = client.post("/api/tasks", json={"name": "test_api_add", "args": [1]}).json()[
        "task_id"
    ]
    wait_finished(client, task_id)

    assert client.post("/api/tasks/unknown-id/cancel").status_code == 404
    finished = client.post(f"/api/tasks/{task_id}/cancel")
    assert finished.status_code == 409
    assert finished.json()["error"] == "TaskAlreadyFinished"


# -- the guide's maintenance routes and POST /process ----------------------------------------


@pytest.mark.parametrize(
    ("path", "kwargs", "task_name"),
    [
        ("/api/tasks/rating/recalculate", {}, "calculate_all_ratings"),
        ("/api/tasks/rating/recalculate", {"json": {}}, "calculate_all_ratings"),
        ("/api/tasks/rating/recalculate", {"json": {"resource_id": "r1"}}, "calculate_rating"),
        ("/api/tasks/impressions/sync", {}, "sync_impressions_from_redis"),
        ("/api/tasks/cleanup/sessions", {}, "cleanup_sessions"),
    ],
)
def test_maintenance_routes_submit_their_task(
    client: TestClient, path: str, kwargs: dict[str, Any], task_name: str
) -> None:
    response = client.post(path, **kwargs)

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"task_id", "status_url"}
    record = wait_finished(client, body["task_id"])
    assert record["name"] == task_name
    assert record["status"] == "SUCCESS", record["error"]


def test_recalculate_without_any_body_or_content_type(client: TestClient) -> None:
    # `curl -X POST localhost:8000/api/tasks/rating/recalculate`, byte for byte.
    response = client.request("POST", "/api/tasks/rating/recalculate", headers={"accept": "*/*"})

    assert response.status_code == 202


@pytest.mark.parametrize(
    "body", [{"resource_id": ""}, {"resource_id": 5}, {"resource": "r1"}, [1], "x"]
)
def test_recalculate_rejects_bad_bodies(client: TestClient, body: Any) -> None:
    assert client.post("/api/tasks/rating/recalculate", json=body).status_code == 422


def test_process_submits_calculate_rating(client: TestClient) -> None:
    response = client.post("/process", json={"resource_id": "r-42"})

    assert response.status_code == 202
    record = wait_finished(client, response.json()["task_id"])
    assert (record["name"], record["args"]) == ("calculate_rating", ["r-42"])


@pytest.mark.parametrize("body", [{}, {"resource_id": 7}, {"resource_id": ""}, {"id": "x"}])
def test_process_without_a_string_resource_id_is_422(client: TestClient, body: Any) -> None:
    response = client.post("/process", json=body)

    assert response.status_code == 422
    assert "resource_id" in response.json()["detail"]


def test_process_rejects_a_non_object_body(client: TestClient) -> None:
    assert client.post("/process", json=["r1"]).status_code == 422


def _submitted_record(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 202, response.text
    record = client.get(f"/api/tasks/{response.json()['task_id']}/status")
    assert record.status_code == 200
    return dict(record.json())


@pytest.mark.parametrize(
    ("body", "priority"),
    [
        ({"name": "test_api_echo", "args": [1]}, DEFAULT_PRIORITY),
        ({"name": "test_api_urgent", "args": [1]}, 1),
        ({"name": "test_api_urgent", "args": [1], "priority": 8}, 8),
        ({"name": "test_api_echo", "args": [1], "priority": 0}, 0),
        ({"name": "test_api_echo", "args": [1], "priority": 9}, 9),
        ({"name": "test_api_echo", "args": [1], "priority": None}, DEFAULT_PRIORITY),
    ],
)
def test_the_record_shows_the_call_s_priority_else_the_task_s_else_the_middle(
    client: TestClient, body: dict[str, Any], priority: int
) -> None:
    assert _submitted_record(client, body)["priority"] == priority


@pytest.mark.parametrize("priority", [-1, 10, 4.5, "4", True])
def test_a_priority_outside_0_to_9_is_a_422_naming_the_field(
    client: TestClient, priority: object
) -> None:
    response = client.post(
        "/api/tasks", json={"name": "test_api_echo", "args": [1], "priority": priority}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "priority"]
    assert error["msg"]


def test_the_task_list_shows_each_task_s_default_priority(client: TestClient) -> None:
    tasks = {t["name"]: t for t in client.get("/api/tasks/executors").json()["tasks"]}
    assert tasks["test_api_urgent"]["priority"] == 1
    assert tasks["test_api_echo"]["priority"] == DEFAULT_PRIORITY
