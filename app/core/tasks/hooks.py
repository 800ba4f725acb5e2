"""Lifecycle callbacks: logging and metrics plug in here instead of into executors.

Hooks run in whichever process wrote the transition: the api for submits and in-process runs,
a Celery worker for tasks it runs. Every transition is written once (the store's update is a
compare-and-set), so a hook sees it once in the whole system. A hook that raises is logged and
never breaks a task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

from app.core.tasks import metrics
from app.core.tasks.models import TaskResult, TaskStatus, utcnow

log = logging.getLogger("tasklane.tasks")

M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """A metric's `.labels()` children, kept by label values.

    prometheus_client validates the values and takes a lock on every labels() call; the hooks
    and the HTTP middleware make several such calls per submit. The cache holds one entry per
    child prometheus_client already keeps forever, so it adds no cardinality of its own.
    """

    __slots__ = ("_children", "_labels")

    def __init__(self, metric: M) -> None:
        self._labels = metric.labels
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        """The child for these label values, in the metric's label order."""
        child = self._children.get(values)
        if child is None:
            # A race between threads creates no second child: labels() returns the same one.
            child = self._children[values] = self._labels(*values)
        return child


class TaskHooks:
    """No-op base: override what you need."""

    def after_submit(self, record: TaskResult) -> None:
        """A PENDING record was written and handed to an executor (api process)."""

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        """record just moved from `previous` to record.status (the process that ran it)."""

    def on_rate_limited(self, record: TaskResult, wait: float) -> None:
        """record's start was deferred `wait` seconds by its rate limit (the process that
        would have started it; the record stays waiting)."""


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

    def on_rate_limited(self, record: TaskResult, wait: float) -> None:
        for hook in self.hooks:
            try:
                hook.on_rate_limited(record, wait)
            except Exception:
                log.exception("on_rate_limited hook %r failed", hook)


class TransitionLog(TaskHooks):
    """One structured log line per task transition (task id, name, executor, status, duration).

    A product promise (README, the migration guide), so never demoted; the cost is kept down
    instead: nothing is built when the level is off, the record skips the stack walk (below),
    and the formatters in app/logs.py are cheap.
    """

    def after_submit(self, record: TaskResult) -> None:
        if log.isEnabledFor(logging.INFO):
            _write(logging.INFO, record, _fields(record), "after_submit")

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        level = logging.WARNING if record.status is TaskStatus.FAILURE else logging.INFO
        if not log.isEnabledFor(level):
            return
        fields = _fields(record)
        fields["previous_status"] = previous.value if previous else None
        if record.error is not None and (record.finished or record.status is TaskStatus.RETRY):
            fields["error_type"] = record.error.type
            fields["error"] = record.error.message
        _write(level, record, fields, "on_transition")

    def on_rate_limited(self, record: TaskResult, wait: float) -> None:
        # DEBUG: a limited burst defers each task many times; the counter tells the story.
        if log.isEnabledFor(logging.DEBUG):
            fields = _fields(record)
            fields["rate_wait_s"] = round(wait, 3)
            log.debug("task %s rate-limited for %.3f s", record.name, wait, extra=fields)


def _write(level: int, record: TaskResult, fields: dict[str, object], hook: str) -> None:
    """log.log(level, "task %s %s", name, status, extra=fields), minus Logger.findCaller.

    The call site is known, so the LogRecord is built directly: findCaller walks the stack
    to find it, and inside a request's coroutine stack (Python 3.11 materialises a frame
    object per step) that walk cost as much as formatting the line.
    """
    line = log.makeRecord(
        log.name,
        level,
        __file__,
        _write.__code__.co_firstlineno,
        "task %s %s",
        (record.name, record.status.value),
        None,
        hook,
        fields,
    )
    log.handle(line)


class TaskMetrics(TaskHooks):
    """The DESIGN.md §5 task series: submitted, finished, retries, duration, queue wait, tasks
    in progress, and rate-limit deferrals.

    In progress is counted per process, for the attempts this process saw start: a transition
    out of STARTED written here for an attempt that started elsewhere (the reaper settling a
    dead process's task, say) must not drive this process's gauge below zero.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # task id -> executor label of its running attempt
        self._submitted = Children(metrics.TASKS_SUBMITTED)
        self._finished = Children(metrics.TASKS_FINISHED)
        self._retries = Children(metrics.TASK_RETRIES)
        self._in_progress = Children(metrics.TASKS_IN_PROGRESS)
        self._queue_wait = Children(metrics.TASK_QUEUE_WAIT)
        self._duration = Children(metrics.TASK_DURATION)
        self._rate_limited = Children(metrics.RATE_LIMITED)

    def on_rate_limited(self, record: TaskResult, wait: float) -> None:
        self._rate_limited(record.name).inc()

    def after_submit(self, record: TaskResult) -> None:
        self._submitted(record.name, record.executor).inc()

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        status = record.status
        if status is TaskStatus.STARTED:
            self._started(record)
            return
        if previous is TaskStatus.STARTED:
            self._attempt_ended(record)
        if status is TaskStatus.RETRY:
            self._retries(record.name).inc()
        elif record.finished:
            self._finished(record.name, record.executor, status.value).inc()

    def _started(self, record: TaskResult) -> None:
        with self._lock:
            if record.task_id in self._running:
                return
            self._running[record.task_id] = record.executor
        self._in_progress(record.executor).inc()
        if record.attempts <= 1 and record.started_at is not None:
            wait = _seconds(record.submitted_at, record.started_at)
            self._queue_wait(record.name, record.executor).observe(wait)

    def _attempt_ended(self, record: TaskResult) -> None:
        with self._lock:
            executor = self._running.pop(record.task_id, None)
        if executor is not None:
            self._in_progress(executor).dec()
        if record.started_at is not None:
            ended = record.finished_at or utcnow()
            self._duration(record.name, record.executor).observe(_seconds(record.started_at, ended))


def default_hooks() -> HookChain:
    """What every process that runs or submits tasks wires: one log line and the metrics."""
    return HookChain([TransitionLog(), TaskMetrics()])


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)


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
