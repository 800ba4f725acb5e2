"""Structured logs: one line per task transition, JSON in containers, key=value locally."""

from __future__ import annotations

import json
import logging

import pytest

from app.core.tasks import TaskContext, TaskManager, TaskStatus, task
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.hooks import HookChain, TransitionLog
from app.core.tasks.store.memory import MemoryStore
from app.logs import JsonFormatter, TextFormatter


@task("test_logging_flaky", retries=1, backoff=0.01, takes_context=True)
async def flaky(ctx: TaskContext, fail_first: bool) -> str:
    if fail_first and ctx.attempt == 1:
        raise ValueError("first attempt fails")
    return "ok"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tasklane.tasks", logging.INFO, __file__, 1, "task %s", ("x",), None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_one_object_per_line_with_the_extra_fields() -> None:
    line = JsonFormatter().format(_record(task_id="t-1", status="SUCCESS", duration_s=0.5))

    assert "\n" not in line
    payload = json.loads(line)
    assert payload["message"] == "task x"
    assert payload["level"] == "INFO"
    assert payload["task_id"] == "t-1"
    assert payload["status"] == "SUCCESS"
    assert payload["duration_s"] == 0.5


def test_text_formatter_appends_key_value_pairs_and_drops_uvicorn_colour_copies() -> None:
    line = TextFormatter().format(_record(task_id="t-1", color_message="\x1b[36mx\x1b[0m"))

    assert line.endswith("tasklane.tasks: task x task_id=t-1")
    assert "color_message" not in line


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fail_first", "statuses"),
    [
        (False, ["PENDING", "STARTED", "SUCCESS"]),
        (True, ["PENDING", "STARTED", "RETRY", "STARTED", "SUCCESS"]),
    ],
)
async def test_each_transition_logs_exactly_one_line(
    caplog: pytest.LogCaptureFixture, fail_first: bool, statuses: list[str]
) -> None:
    store = MemoryStore()
    hooks = HookChain([TransitionLog()])
    manager = TaskManager(
        store=store, executor=BackgroundTasksExecutor(store, hooks=hooks), hooks=hooks
    )
    caplog.set_level(logging.INFO, logger="tasklane.tasks")

    task_id = await manager.submit("test_logging_flaky", fail_first)
    record = await manager.wait(task_id, timeout=10)
    await manager.executor.wait_all(timeout=10)

    assert record.status is TaskStatus.SUCCESS
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == task_id]
    assert [r.status for r in lines] == statuses
    assert all(r.task == "test_logging_flaky" and r.executor == "background" for r in lines)
    assert lines[-1].duration_s >= 0
    if fail_first:
        retry = lines[2]
        assert retry.error_type == "ValueError"
        assert retry.error == "first attempt fails"
