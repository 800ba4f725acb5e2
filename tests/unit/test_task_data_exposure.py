"""What of a task record the API serves: no traceback unless TASKLANE_EXPOSE_TRACEBACKS is on,
and a sensitive task's values (@task(sensitive=...)) redacted in status answers, listings and
the transition log lines, while the stored record keeps the real values."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import scripts.harness.sample_tasks  # noqa: F401 - registers sample_secret, sample_crash...
from app.config import Settings
from app.core.tasks import TaskResult, TaskStatus, task
from app.core.tasks.redaction import REDACTED, Redaction
from app.core.tasks.registry import TaskRegistry
from app.logs import JsonFormatter, TextFormatter
from app.main import create_app

R = REDACTED


def make_client(**overrides: Any) -> TestClient:
    settings = Settings(
        store="memory", executor="background", scheduler="off", api_token=None, **overrides
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        """Every line as both formatters write it (extras included)."""
        formatters = (JsonFormatter(), TextFormatter())
        return "\n".join(f.format(r) for r in self.records for f in formatters)


@pytest.fixture
def transition_lines() -> Iterator[_Lines]:
    lines = _Lines()
    logger = logging.getLogger("tasklane.tasks")
    logger.addHandler(lines)
    yield lines
    logger.removeHandler(lines)


def submit(client: TestClient, name: str, *args: Any, **kwargs: Any) -> str:
    response = client.post("/api/tasks", json={"name": name, "args": args, "kwargs": kwargs})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def finished(client: TestClient, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/api/tasks/{task_id}/status").json()
        if record["status"] in ("SUCCESS", "FAILURE", "CANCELLED"):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.02)


def listed(client: TestClient, task_id: str) -> dict[str, Any]:
    [record] = [r for r in client.get("/api/tasks").json()["tasks"] if r["task_id"] == task_id]
    return record


def stored(client: TestClient, task_id: str) -> TaskResult:
    manager = client.app.state.manager  # type: ignore[attr-defined]
    record = client.portal.call(manager.get_result, task_id)  # type: ignore[union-attr]
    assert record is not None
    return record


def test_a_traceback_is_not_served_by_default(client: TestClient) -> None:
    task_id = submit(client, "sample_crash", "boom at /srv/secret/path")

    for record in (finished(client, task_id), listed(client, task_id)):
        assert record["status"] == "FAILURE"
        assert record["error"] == {"type": "RuntimeError", "message": "boom at /srv/secret/path"}
    kept = stored(client, task_id).error
    assert kept is not None
    assert "Traceback" in kept.traceback


def test_tracebacks_are_served_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_EXPOSE_TRACEBACKS", "true")
    with make_client() as client:
        task_id = submit(client, "sample_crash", "boom")

        for record in (finished(client, task_id), listed(client, task_id)):
            assert "Traceback" in record["error"]["traceback"]
            assert "raise RuntimeError(reason)" in record["error"]["traceback"]


def test_a_sensitive_task_s_values_are_never_served_or_logged(
    client: TestClient, transition_lines: _Lines
) -> None:
    task_id = submit(client, "sample_secret", "pw-4711", note="note-0815")

    for record in (finished(client, task_id), listed(client, task_id)):
        assert record["status"] == "SUCCESS"
        assert (record["args"], record["kwargs"], record["result"]) == ([R], {"note": R}, R)
        assert "4711" not in json.dumps(record)
        assert "0815" not in json.dumps(record)
    kept = stored(client, task_id)
    assert (kept.args, kept.kwargs, kept.result) == (
        ["pw-4711"],
        {"note": "note-0815"},
        "token-for-pw-4711",
    )
    logged = transition_lines.text()
    assert task_id in logged
    assert "SUCCESS" in logged
    assert "4711" not in logged
    assert "0815" not in logged


def test_only_the_named_arguments_are_hidden(client: TestClient) -> None:
    positional = submit(client, "sample_secret_field", "ann", "pw-1")
    keyword = submit(client, "sample_secret_field", "bob", password="pw-2")

    first, second = finished(client, positional), finished(client, keyword)
    assert (first["args"], first["result"]) == (["ann", R], "ann signed in")
    assert (second["args"], second["kwargs"], second["result"]) == (
        ["bob"],
        {"password": R},
        "bob signed in",
    )


def test_a_record_of_a_task_this_process_does_not_know_shows_no_values(
    client: TestClient,
) -> None:
    record = TaskResult(
        task_id="from-elsewhere",
        name="not_registered_here",
        status=TaskStatus.SUCCESS,
        executor="celery",
        queue="light",
        args=["secret"],
        kwargs={"key": "secret"},
        result="secret",
    )
    manager = client.app.state.manager  # type: ignore[attr-defined]
    client.portal.call(manager.store.create, record)  # type: ignore[union-attr]

    served = client.get("/api/tasks/from-elsewhere/status").json()

    assert (served["args"], served["kwargs"], served["result"]) == ([R], {"key": R}, R)


def test_the_audio_of_the_websocket_task_is_not_echoed(client: TestClient) -> None:
    chunk = "AAAAAAAA" * 4
    task_id = submit(client, "process_speak_audio", "res-9", [chunk, chunk], "ann")

    record = finished(client, task_id)

    assert record["args"] == ["res-9", R, "ann"]
    assert chunk not in json.dumps(record)


def test_sensitive_names_must_be_parameters() -> None:
    def login(user: str, password: str) -> None: ...

    with pytest.raises(ValueError, match="passwd"):
        task("login", sensitive=("passwd",), target=TaskRegistry())(login)
    assert Redaction.of(login, "password", takes_context=False) == Redaction.of(
        login, ["password"], takes_context=False
    )
