"""Structured logs: one line per task transition, JSON in containers, key=value locally."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

import pytest

from app.core.tasks import TaskContext, TaskManager, TaskStatus, task
from app.core.tasks import hooks as hooks_module
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


@pytest.mark.parametrize(
    "created",
    [0.0, 1.0005, 1700000000.0004999, 1700000000.9994999, 1700000000.9999996, 1234567890.123456],
)
def test_json_timestamp_is_what_datetime_isoformat_gives(created: float) -> None:
    record = _record()
    record.created = created

    payload = json.loads(JsonFormatter().format(record))

    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert payload["ts"] == expected


@pytest.mark.parametrize("with_exception", [False, True])
@pytest.mark.parametrize("with_stack", [False, True])
def test_text_formatter_writes_what_the_generic_formatter_would(
    with_exception: bool, with_stack: bool
) -> None:
    generic = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    record = _record(task_id="t-1", attempt=2)
    if with_exception:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    if with_stack:
        record.stack_info = "Stack (most recent call last):\n  here"

    line = TextFormatter().format(record)
    record.exc_text = None  # let the generic formatter render the traceback itself

    assert line == f"{generic.format(record)} task_id=t-1 attempt=2"


@pytest.mark.asyncio
async def test_transition_lines_name_their_hook_and_build_nothing_when_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    hooks = HookChain([TransitionLog()])
    manager = TaskManager(
        store=store, executor=BackgroundTasksExecutor(store, hooks=hooks), hooks=hooks
    )
    caplog.set_level(logging.INFO, logger="tasklane.tasks")
    task_id = await manager.submit("test_logging_flaky", False)
    await manager.wait(task_id, timeout=10)
    await manager.executor.wait_all(timeout=10)
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == task_id]
    assert [r.funcName for r in lines] == ["after_submit", "on_transition", "on_transition"]
    assert all(r.pathname == hooks_module.__file__ for r in lines)

    built: list[object] = []
    monkeypatch.setattr(hooks_module, "_fields", lambda record: built.append(record) or {})
    caplog.set_level(logging.WARNING, logger="tasklane.tasks")
    quiet_id = await manager.submit("test_logging_flaky", False)
    await manager.wait(quiet_id, timeout=10)
    await manager.executor.wait_all(timeout=10)
    assert built == []
