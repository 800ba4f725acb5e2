"""TaskManager: the one API application code uses to run background work.

submit() is one pass: it validates the name and arguments, asks the executor's plan() where
the task goes (no I/O), writes the PENDING record (with the broker message, when it can go out
in the same store call), then calls the executor's dispatch() once; everything else reads or
changes records in the shared store, so the answer never depends on which executor (or which
process) ran the task. submit_many() does the
same for a batch in bulk: every call checked first, one store write, one dispatch_many().
"""

from __future__ import annotations

import asyncio
import contextlib
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
    InvalidPriority,
    InvalidTaskId,
    StoreUnavailable,
    TaskAlreadyFinished,
    TaskNotFound,
    UnsupportedOption,
)
from app.core.tasks.execution import mark_interrupted
from app.core.tasks.executors.base import Route, Submission
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import (
    SubmitOptions,
    TaskResult,
    TaskStatus,
    check_priority,
    is_clean_id,
    utcnow,
)
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.executors.base import Executor
    from app.core.tasks.rate_limits import RateLimits
    from app.core.tasks.store import ResultStore


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
        max_args_bytes: int | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.store = store
        #: The process's rate limits (app/core/tasks/rate_limits.py), shared with its runner.
        self.rate_limits = rate_limits
        self.executor = executor
        self.registry = registry
        self.hooks = hooks or TaskHooks()
        #: TASKLANE_MAX_ARGS_BYTES; None: no limit (SubmitOptions.max_args_bytes overrides it).
        self.max_args_bytes = max_args_bytes

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
        response is sent. Raises UnknownTaskError, InvalidTaskArgs (ArgumentsTooLarge: over
        TASKLANE_MAX_ARGS_BYTES), InvalidTaskId, UnsupportedOption, or ExecutorUnavailable
        (nothing can run it now; the record is settled as FAILURE so it never stays PENDING;
        StoreFull: the memory store's budget is taken by unfinished tasks, nothing written).
        """
        began = time.perf_counter()
        call = self._check(name, args, kwargs, options)
        route = self.executor.plan(call)
        # With a route.message (Celery on the store's own Redis) the message goes out in the
        # record's own step.
        stored, created = await self.store.create(self._record(call, route), push=route.message)
        if not created:
            return stored.task_id  # idempotent re-submit: the first submission stands
        try:
            await self.executor.dispatch(stored, route, background_tasks=background_tasks)
        except ExecutorUnavailable as exc:
            await mark_interrupted(self.store, stored.task_id, f"not dispatched: {exc}", self.hooks)
            raise
        self._submitted(stored, time.perf_counter() - began)
        return stored.task_id

    async def submit_many(
        self, calls: Iterable[TaskCall], *, background_tasks: BackgroundTasks | None = None
    ) -> list[str]:
        """Submit a batch; returns the ids in call order (an existing id: see submit()).

        Every call is checked first, so a bad one raises (like submit()) before any record is
        written. Then the records (with their Celery messages, when the broker is the store's
        Redis) are written in one store round trip, and the rest dispatched together
        (Celery-bound ones in one broker batch). A task that cannot be dispatched has its
        record settled FAILURE while the others go ahead; the first such ExecutorUnavailable
        is raised once all are handled. Each submitted task observes the batch's duration
        divided by the batch size in tasklane_submit_duration_seconds.
        """
        began = time.perf_counter()
        checked = [self._check(c.name, c.args, c.kwargs, c.options) for c in calls]
        if not checked:
            return []
        # Planned only once every call passed its checks (planning counts routing decisions).
        routes = [self.executor.plan(call) for call in checked]
        stored = await self.store.create_many(
            [self._record(call, route) for call, route in zip(checked, routes, strict=True)],
            pushes=[route.message for route in routes],
        )
        batch = [
            (record, route)
            for (record, created), route in zip(stored, routes, strict=True)
            if created
        ]
        outcomes = (
            await self.executor.dispatch_many(batch, background_tasks=background_tasks)
            if batch
            else []
        )
        share = (time.perf_counter() - began) / len(checked)
        refused: ExecutorUnavailable | None = None
        for (record, _), failure in zip(batch, outcomes, strict=True):
            if failure is None:
                self._submitted(record, share)
                continue
            reason = f"not dispatched: {failure}"
            await mark_interrupted(self.store, record.task_id, reason, self.hooks)
            refused = refused or failure
        if refused is not None:
            raise refused
        return [record.task_id for record, _ in stored]

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
        if previous[-1].rate_limited_until is not None and self.rate_limits is not None:
            # It was waiting for its rate slot: it waits no more (the gauge counts waiters).
            with contextlib.suppress(StoreUnavailable):
                await self.rate_limits.limiter.forget(updated.name, task_id)
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

    def _check(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: SubmitOptions | None,
    ) -> Submission:
        """Everything submit refuses before writing: name, options, arguments (no I/O)."""
        options = options or SubmitOptions()
        spec = self.registry.get(name)
        self._check_options(options)
        limit = options.max_args_bytes or self.max_args_bytes
        json_args, json_kwargs = normalise_arguments(spec, tuple(args), kwargs, max_bytes=limit)
        task_id = options.task_id or str(uuid.uuid4())
        return Submission(task_id, spec, json_args, json_kwargs, options)

    @staticmethod
    def _record(call: Submission, route: Route) -> TaskResult:
        """The PENDING record of a checked call, as planned."""
        return TaskResult(
            task_id=call.task_id,
            name=call.spec.name,
            status=TaskStatus.PENDING,
            executor=route.executor,
            queue=route.queue,
            args=call.args,
            kwargs=call.kwargs,
            submitted_at=utcnow(),
            priority=route.priority,
        )

    def _submitted(self, record: TaskResult, seconds: float) -> None:
        self.hooks.after_submit(record)
        metrics.SUBMIT_DURATION.labels(executor=record.executor).observe(seconds)

    def _check_options(self, options: SubmitOptions) -> None:
        executor = self.executor
        if options.task_id is not None and not is_clean_id(options.task_id):
            raise InvalidTaskId(options.task_id)
        if options.countdown is not None:
            if not executor.supports_delay:
                raise UnsupportedOption("countdown", executor.name)
            if not 0 <= options.countdown <= 86_400:
                raise UnsupportedOption("countdown outside 0..86400 s", executor.name)
        if options.priority is not None:
            if not executor.supports_priority:
                raise UnsupportedOption("priority", executor.name)
            try:
                check_priority(options.priority)
            except ValueError as exc:
                raise InvalidPriority(str(exc)) from None
