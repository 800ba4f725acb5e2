"""The Executor contract: four methods and capability flags the manager checks before dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.core.tasks.errors import ExecutorUnavailable

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.models import TaskResult, TaskSpec
    from app.core.tasks.store import QueuePush

#: What submit_many hands to dispatch_many: each new PENDING record with its countdown.
Batch = Sequence[tuple["TaskResult", "float | None"]]


class Executor:
    """Base class; subclasses flip the flags they honour and implement the four methods."""

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

    async def dispatch(
        self,
        record: TaskResult,
        *,
        background_tasks: BackgroundTasks | None = None,
        countdown: float | None = None,
    ) -> None:
        """Start (or queue) the task whose PENDING record was just written. With
        background_tasks, an in-process start waits until the HTTP response is sent."""
        raise NotImplementedError

    async def dispatch_many(
        self, batch: Batch, *, background_tasks: BackgroundTasks | None = None
    ) -> Sequence[ExecutorUnavailable | None]:
        """dispatch() each (record, countdown) in order; per task, None when it was handed
        over, else the ExecutorUnavailable that refused it (the others still go ahead).
        Executors that can publish in bulk override this."""
        outcomes: list[ExecutorUnavailable | None] = []
        for record, countdown in batch:
            try:
                await self.dispatch(record, background_tasks=background_tasks, countdown=countdown)
            except ExecutorUnavailable as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def message_for(
        self, record: TaskResult, countdown: float | None, *, push_url: str | None
    ) -> QueuePush | None:
        """The broker message the store should push with the record, when the store's Redis
        (push_url) is this executor's broker; None: dispatch() once the record is written.
        No I/O (it runs inside submit)."""
        return None

    def sent_with_record(self, record: TaskResult, countdown: float | None) -> None:
        """The message_for() message went out with its newly created record (instead of a
        dispatch()): bookkeeping only, no I/O."""

    def route(self, spec: TaskSpec) -> str:
        """Name of the executor that will run a task of this spec, written into its record.

        Must not do network I/O (it runs inside submit). Raises ExecutorUnavailable when no
        executor may take the task now.
        """
        return self.name

    def queue_for(self, spec: TaskSpec) -> str:
        """The queue name written into the record (the Celery queue where one is used)."""
        return spec.queue

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
