"""Priorities at the edges of the API: @task(priority=) checks its value, the default sits
in the middle of the scale, and records written before priorities still read."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.tasks import registry, task
from app.core.tasks.models import DEFAULT_PRIORITY, TaskResult, TaskStatus


def _noop() -> None:
    """Never runs: only its registration is tested."""


def test_the_default_is_a_middle_level() -> None:
    assert 0 < DEFAULT_PRIORITY < 9


@pytest.mark.parametrize("priority", [-1, 10, 2.0, True])
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
