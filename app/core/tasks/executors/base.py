"""The Executor contract: four methods and capability flags the manager checks before dispatch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.models import TaskResult, TaskSpec


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
