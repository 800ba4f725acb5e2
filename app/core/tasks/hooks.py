"""Lifecycle callbacks: logging (and later metrics) plug in here instead of into executors.

Hooks run in whichever process wrote the transition: the api for submits and in-process runs,
a Celery worker for tasks it runs. A hook that raises is logged and never breaks a task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from app.core.tasks.models import TaskResult, TaskStatus

log = logging.getLogger("tasklane.tasks")


class TaskHooks:
    """No-op base: override what you need."""

    def after_submit(self, record: TaskResult) -> None:
        """A PENDING record was written and handed to an executor (api process)."""

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        """record just moved from `previous` to record.status (the process that ran it)."""


class HookChain(TaskHooks):
    """Calls several hooks in order, isolating each one's failure."""

    def __init__(self, hooks: Iterable[TaskHooks]) -> None:
        self.hooks = list(hooks)

    def after_submit(self, record: TaskResult) -> None:
        for hook in self.hooks:
            try:
                hook.after_submit(record)
            except Exception:
                log.exception("after_submit hook %r failed", hook)

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        for hook in self.hooks:
            try:
                hook.on_transition(record, previous)
            except Exception:
                log.exception("on_transition hook %r failed", hook)


class TransitionLog(TaskHooks):
    """One structured log line per task transition (task id, name, executor, status, duration)."""

    def after_submit(self, record: TaskResult) -> None:
        log.info("task %s %s", record.name, record.status.value, extra=_fields(record))

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        fields = _fields(record)
        fields["previous_status"] = previous.value if previous else None
        if record.error is not None and (record.finished or record.status is TaskStatus.RETRY):
            fields["error_type"] = record.error.type
            fields["error"] = record.error.message
        level = logging.WARNING if record.status is TaskStatus.FAILURE else logging.INFO
        log.log(level, "task %s %s", record.name, record.status.value, extra=fields)


def _fields(record: TaskResult) -> dict[str, object]:
    fields: dict[str, object] = {
        "task_id": record.task_id,
        "task": record.name,
        "executor": record.executor,
        "queue": record.queue,
        "status": record.status.value,
        "attempt": record.attempts,
    }
    if record.started_at and record.finished_at:
        fields["duration_s"] = round((record.finished_at - record.started_at).total_seconds(), 6)
    if record.worker:
        fields["worker"] = record.worker
    return fields
