"""The Executor contract: plan() before the record is written, dispatch() after, cancel(), and
capability flags the manager checks before either.

A submit is one pass (DESIGN.md §3): the manager checks the call, asks plan() where it goes (no
I/O), writes the PENDING record (with the broker message, when plan() could build one for the
store to push), then hands the record and its Route to dispatch().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.tasks.errors import ExecutorUnavailable

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.metrics import FallbackReason
    from app.core.tasks.models import SubmitOptions, TaskResult, TaskSpec
    from app.core.tasks.store import QueuePush


@dataclass(frozen=True, slots=True)
class Submission:
    """A call that passed submit's checks: its id, spec, JSON-safe arguments and options."""

    task_id: str
    spec: TaskSpec
    args: list[Any]
    kwargs: dict[str, Any]
    options: SubmitOptions

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def priority(self) -> int:
        """The call's priority, else its spec's default (0 starts first)."""
        chosen = self.options.priority
        return self.spec.priority if chosen is None else chosen


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where one task goes, decided by plan() before its record is written."""

    #: Written into record.executor ("background", "celery"; "unavailable" only in a preview).
    executor: str
    #: Written into record.queue: the Celery queue where one is used.
    queue: str
    #: Seconds before the first attempt (SubmitOptions.countdown).
    countdown: float | None = None
    #: Written into record.priority: 0 starts first .. 9 (Submission.priority); None only in
    #: a preview.
    priority: int | None = None
    #: The broker message the store pushes with the record (its Redis is the broker): once
    #: the record is created, the message is out and dispatch() only does bookkeeping.
    message: QueuePush | None = None
    #: Why this is not the first choice (fallbacks{reason}), None when it is.
    fallback: FallbackReason | None = None
    #: Set by configuration or the spec (TASKLANE_ROUTES, @task(executor=...)), not decided.
    pinned: bool = False


#: What submit_many hands to dispatch_many: each new PENDING record with its Route.
Batch = Sequence[tuple["TaskResult", Route]]


class Executor:
    """Base class; subclasses flip the flags they honour and implement dispatch and cancel."""

    #: Short name written into records and metrics labels ("background", "celery").
    name: str = "executor"
    #: Can a task that is already running be cancelled?
    supports_cancel_running: bool = False
    #: Does a failed attempt get retried per the spec's retries/backoff?
    supports_retry: bool = False
    #: Can a task be submitted with a priority?
    supports_priority: bool = False
    #: Can a task be submitted to start after a countdown?
    supports_delay: bool = False
    #: Does a queued task survive the api process restarting?
    durable: bool = False

    def plan(self, call: Submission) -> Route:
        """Where this task goes (counted in routing metrics where the executor decides), and
        the broker message for the store to push with the record when it can go out that way.

        No network I/O (it runs inside submit). Raises ExecutorUnavailable when no executor
        may take the task now.
        """
        return Route(
            executor=self.name,
            queue=call.spec.queue,
            countdown=call.options.countdown,
            priority=call.priority,
        )

    def route_preview(self, spec: TaskSpec) -> Route:
        """Where a task of this spec would go if submitted now, counting nothing (executor
        "unavailable" when submit would answer 503). No message, no I/O."""
        return Route(executor=self.name, queue=spec.queue)

    async def dispatch(
        self, record: TaskResult, route: Route, *, background_tasks: BackgroundTasks | None = None
    ) -> None:
        """Start (or queue) the task whose PENDING record was just written per `route`; when
        route.message went out with the record, bookkeeping only. With background_tasks, an
        in-process start waits until the HTTP response is sent."""
        raise NotImplementedError

    async def dispatch_many(
        self, batch: Batch, *, background_tasks: BackgroundTasks | None = None
    ) -> Sequence[ExecutorUnavailable | None]:
        """dispatch() each (record, route) in order; per task, None when it was handed over,
        else the ExecutorUnavailable that refused it (the others still go ahead). Executors
        that can publish in bulk override this."""
        outcomes: list[ExecutorUnavailable | None] = []
        for record, route in batch:
            try:
                await self.dispatch(record, route, background_tasks=background_tasks)
            except ExecutorUnavailable as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    async def cancel(self, task_id: str) -> None:
        """Stop the task if it is here (the manager has already updated its record)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Acquire resources; called once from the app's lifespan (or lazily on first use)."""

    async def stop(self, grace: float) -> None:
        """Stop accepting, drain for up to `grace` seconds, settle what is left."""

    def describe(self) -> dict[str, Any]:
        """Capabilities and live state, for GET /api/tasks/executors."""
        return {
            "name": self.name,
            "supports_cancel_running": self.supports_cancel_running,
            "supports_retry": self.supports_retry,
            "supports_priority": self.supports_priority,
            "supports_delay": self.supports_delay,
            "durable": self.durable,
        }
