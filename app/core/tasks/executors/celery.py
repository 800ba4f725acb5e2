"""CeleryExecutor: publishes tasks to the broker for the Celery workers (DESIGN.md §3).

The message carries only the task name, the JSON arguments and the manager's task id: the
PENDING record is already in the shared store, and the worker's task wrapper runs it through the
same execute() as the in-process runner, writing STARTED/RETRY/SUCCESS/FAILURE into that record.

Publishing blocks (kombu is synchronous), so it runs on a daemon thread and is bounded by
`publish_timeout`: a dead or black-holed broker becomes BrokerUnavailable within that time
instead of holding the request. A publish that times out may still land later; that is safe,
because whoever takes the task back first changes the record's executor, and a worker refuses a
record that is no longer routed to "celery".
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from app.core.tasks.errors import BrokerUnavailable, StoreUnavailable
from app.core.tasks.executors.base import Executor
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import TaskStatus
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.threads import run_in_daemon_thread

if TYPE_CHECKING:
    from celery import Celery
    from fastapi import BackgroundTasks

    from app.core.tasks.models import TaskResult, TaskSpec
    from app.core.tasks.store import ResultStore

log = logging.getLogger("tasklane.celery")

#: What a broker that is down, unreachable or refusing looks like from the publishing side.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)


class CeleryExecutor(Executor):
    name = "celery"
    # Cooperative: the worker's task sees the record's cancel_requested flag.
    supports_cancel_running = True
    supports_retry = True
    supports_delay = True
    # Celery could honour one, but dispatch() receives no priority to pass on: accepting the
    # option would silently ignore it. Flip once the manager hands the priority to dispatch().
    supports_priority = False
    durable = True

    def __init__(
        self,
        celery_app: Celery,
        store: ResultStore,
        *,
        publish_timeout: float = 2.0,
        hooks: TaskHooks | None = None,
        queues: QueueRouting | None = None,
        registry: TaskRegistry = default_registry,
        owns_app: bool = False,
    ) -> None:
        self.celery_app = celery_app
        #: Close the app's broker connections in stop() (an app built for this executor alone).
        self.owns_app = owns_app
        self.store = store
        self.publish_timeout = publish_timeout
        self.hooks = hooks or TaskHooks()
        self.queues = queues or QueueRouting()
        self.registry = registry

    def queue_for(self, spec: TaskSpec) -> str:
        return self.queues.queue_for(spec)

    async def dispatch(
        self,
        record: TaskResult,
        *,
        background_tasks: BackgroundTasks | None = None,
        countdown: float | None = None,
    ) -> None:
        """Publish the task to its queue now (background_tasks does not delay a publish: its
        failure must reach the caller as a 503 or a local fallback).

        Raises BrokerUnavailable when the broker does not take it within publish_timeout
        (UnknownTaskError for a name no longer registered).
        """
        queue = self.queues.queue_for(self.registry.get(record.name))

        def publish() -> None:
            self.celery_app.send_task(
                record.name,
                args=record.args,
                kwargs=record.kwargs,
                queue=queue,
                task_id=record.task_id,
                countdown=countdown,
                retry=False,
            )

        try:
            await asyncio.wait_for(run_in_daemon_thread(publish), self.publish_timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"publishing to queue {queue!r} took longer than {self.publish_timeout:g} s"
            ) from None
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def cancel(self, task_id: str) -> None:
        """Revoke a task that had not started (its record is already CANCELLED). A running
        one is terminated only when its spec is terminate_safe (the worker then settles the
        record CANCELLED); otherwise it stops cooperatively through cancel_requested."""
        try:
            record = await self.store.get(task_id)
        except StoreUnavailable:
            record = None
        if record is not None and record.status is TaskStatus.STARTED:
            spec = self.registry.get(record.name) if record.name in self.registry else None
            if spec is not None and spec.terminate_safe:
                await self.revoke(task_id, terminate=True)
            return
        await self.revoke(task_id)

    async def revoke(self, task_id: str, *, terminate: bool = False) -> bool:
        """Ask workers to drop the task's message, best effort (bounded by publish_timeout);
        False when the broadcast failed (logged). A worker that starts later never sees a
        revoke, which is fine: it refuses a record that is not waiting for it anyway."""
        try:
            await asyncio.wait_for(
                run_in_daemon_thread(
                    self.celery_app.control.revoke, task_id, terminate=terminate, signal="SIGTERM"
                ),
                self.publish_timeout,
            )
        except (TimeoutError, *BROKER_ERRORS) as exc:
            log.warning("could not revoke task %s: %s: %s", task_id, type(exc).__name__, exc)
            return False
        return True

    async def stop(self, grace: float) -> None:
        if self.owns_app:
            self.celery_app.close()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            publish_timeout=self.publish_timeout,
            queues={"light": self.queues.light, "heavy": self.queues.heavy},
        )
        return info
