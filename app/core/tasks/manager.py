"""TaskManager: the one API application code uses to run background work.

submit() validates the name and arguments, writes the PENDING record, then hands the task to
the configured executor; everything else reads or changes records in the shared store, so the
answer never depends on which executor (or which process) ran the task.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.core.tasks import metrics
from app.core.tasks.arguments import normalise_arguments
from app.core.tasks.errors import (
    ExecutorUnavailable,
    InvalidTaskId,
    TaskAlreadyFinished,
    TaskNotFound,
    UnsupportedOption,
)
from app.core.tasks.execution import mark_interrupted
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import SubmitOptions, TaskResult, TaskStatus, utcnow
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.executors.base import Executor
    from app.core.tasks.store import ResultStore

_TASK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # it had not started; it never will
    REQUESTED = "requested"  # it is running; it was asked to stop


@dataclass(frozen=True, slots=True)
class TaskCall:
    """One entry of submit_many()."""

    name: str
    args: Sequence[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: SubmitOptions | None = None


class TaskManager:
    """Submit, inspect, cancel and wait for tasks; one per process (see get_task_manager)."""

    def __init__(
        self,
        *,
        store: ResultStore,
        executor: Executor,
        registry: TaskRegistry = default_registry,
        hooks: TaskHooks | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.registry = registry
        self.hooks = hooks or TaskHooks()

    async def start(self) -> None:
        await self.executor.start()

    async def stop(self, grace: float = 25.0) -> None:
        """Stop the executor (drain, then settle the rest as Interrupted) and close the store."""
        await self.executor.stop(grace)
        await self.store.close()

    async def submit(
        self,
        name: str,
        /,
        *args: Any,
        background_tasks: BackgroundTasks | None = None,
        options: SubmitOptions | None = None,
        **kwargs: Any,
    ) -> str:
        """Record and dispatch task `name` with args/kwargs; returns its task id.

        With background_tasks (a FastAPI endpoint's), an in-process task starts after the
        response is sent. Raises UnknownTaskError, InvalidTaskArgs, InvalidTaskId,
        UnsupportedOption, or ExecutorUnavailable (nothing can run it now; the record is
        settled as FAILURE so it never stays PENDING).
        """
        began = time.perf_counter()
        options = options or SubmitOptions()
        spec = self.registry.get(name)
        self._check_options(options)
        json_args, json_kwargs = normalise_arguments(spec, args, kwargs)
        record = TaskResult(
            task_id=options.task_id or str(uuid.uuid4()),
            name=spec.name,
            status=TaskStatus.PENDING,
            # The executor that must run it; the hybrid picks one per task (no network I/O).
            executor=self.executor.route(spec),
            queue=self.executor.queue_for(spec),
            args=json_args,
            kwargs=json_kwargs,
            submitted_at=utcnow(),
        )
        stored, created = await self.store.create(record)
        if not created:
            return stored.task_id  # idempotent re-submit: the first submission stands
        try:
            await self.executor.dispatch(
                stored, background_tasks=background_tasks, countdown=options.countdown
            )
        except ExecutorUnavailable as exc:
            await mark_interrupted(self.store, stored.task_id, f"not dispatched: {exc}", self.hooks)
            raise
        self.hooks.after_submit(stored)
        metrics.SUBMIT_DURATION.labels(executor=stored.executor).observe(
            time.perf_counter() - began
        )
        return stored.task_id

    async def submit_many(
        self, calls: Iterable[TaskCall], *, background_tasks: BackgroundTasks | None = None
    ) -> list[str]:
        """Submit each call in order; returns their ids. A bad call raises before any later
        one is submitted (earlier ones stand)."""
        return [
            await self.submit(
                call.name,
                *call.args,
                background_tasks=background_tasks,
                options=call.options,
                **call.kwargs,
            )
            for call in calls
        ]

    async def get_result(self, task_id: str) -> TaskResult | None:
        """The task's record, or None for an id that was never submitted (or expired)."""
        return await self.store.get(task_id)

    async def cancel(self, task_id: str) -> bool:
        """Cancel the task; False when it is unknown or already finished. See cancel_task()."""
        try:
            await self.cancel_task(task_id)
        except (TaskNotFound, TaskAlreadyFinished):
            return False
        return True

    async def cancel_task(self, task_id: str) -> tuple[CancelOutcome, TaskResult]:
        """Cancel a waiting task outright, or ask a running one to stop.

        Raises TaskNotFound, or TaskAlreadyFinished when it reached a final status first.
        """
        previous: list[TaskResult] = []

        def apply(record: TaskResult) -> TaskResult | None:
            previous.append(record)
            if record.finished:
                return None
            if record.status is TaskStatus.STARTED:
                return record.replace(cancel_requested=True)
            return record.replace(
                status=TaskStatus.CANCELLED, cancel_requested=True, finished_at=utcnow()
            )

        updated = await self.store.update(task_id, apply)
        if updated is None:
            if not previous:
                raise TaskNotFound(task_id)
            raise TaskAlreadyFinished(task_id, previous[-1].status.value)
        await self.executor.cancel(task_id)
        if updated.status is TaskStatus.CANCELLED:
            self.hooks.on_transition(updated, previous[-1].status)
            return CancelOutcome.CANCELLED, updated
        return CancelOutcome.REQUESTED, updated

    async def list(
        self, *, status: TaskStatus | None = None, name: str | None = None, limit: int = 50
    ) -> list[TaskResult]:
        """Recently submitted tasks, newest first."""
        return await self.store.list(status=status, name=name, limit=limit)

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - a deadline for polling, like Celery's get()
        poll_interval: float = 0.05,
    ) -> TaskResult:
        """Poll until the task reaches a final status; returns its record.

        Raises TaskNotFound, or TimeoutError after `timeout` seconds.
        """
        delay = poll_interval
        async with asyncio.timeout(timeout):
            while True:
                record = await self.store.get(task_id)
                if record is None:
                    raise TaskNotFound(task_id)
                if record.finished:
                    return record
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    def _check_options(self, options: SubmitOptions) -> None:
        executor = self.executor
        if options.task_id is not None and not _TASK_ID.fullmatch(options.task_id):
            raise InvalidTaskId(options.task_id)
        if options.countdown is not None:
            if not executor.supports_delay:
                raise UnsupportedOption("countdown", executor.name)
            if not 0 <= options.countdown <= 86_400:
                raise UnsupportedOption("countdown outside 0..86400 s", executor.name)
        if options.priority is not None and not executor.supports_priority:
            raise UnsupportedOption("priority", executor.name)
