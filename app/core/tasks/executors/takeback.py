"""Taking a task back from Celery to run it in-process: the one CAS, and the dispatch deadline.

A record routed to Celery is moved to the in-process runner by one compare-and-set on the
store: executor celery -> background, only while it is PENDING and not cancelled (take_back).
Whoever wins runs the task: a worker's execute() refuses a record whose executor is not
"celery", and the runner here refuses one that is not "background", so a late message (a
publish that timed out but landed, a queue nobody drained) can never run the task twice.

DispatchDeadline (DESIGN.md §3): a task published to Celery that is still PENDING
`deadline` seconds after it became due, while no live worker consumes its queue, is reported
(log + fallbacks{reason="deadline"}); an idempotent one that may run here is taken back, run
in-process, and its message revoked (best effort). A queue that has a live worker is served,
just backlogged, so its tasks are left to the pool (or to KEDA).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.tasks import metrics
from app.core.tasks.errors import ExecutorUnavailable, StoreUnavailable, UnknownTaskError
from app.core.tasks.execution import mark_interrupted
from app.core.tasks.executors.base import Route
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import TaskResult, TaskSpec, TaskStatus
from app.core.tasks.registry import TaskRegistry

if TYPE_CHECKING:
    from app.core.tasks.executors.background import BackgroundTasksExecutor
    from app.core.tasks.executors.celery import CeleryExecutor
    from app.core.tasks.monitor import WorkerMonitor
    from app.core.tasks.store import ResultStore

log = logging.getLogger("tasklane.hybrid")


def take_back(record: TaskResult) -> TaskResult | None:
    """Store mutation: a task still waiting for Celery becomes the in-process runner's."""
    if (
        record.status is not TaskStatus.PENDING
        or record.executor != "celery"
        or record.cancel_requested
    ):
        return None
    return record.replace(executor="background")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Sent:
    """A task published to Celery that no worker had started when we last looked."""

    name: str
    queue: str
    #: time.monotonic() when it became runnable (published, plus its countdown).
    due_at: float


class DispatchDeadline:
    """Remembers tasks published to Celery and takes back the overdue ones (see module)."""

    def __init__(
        self,
        *,
        store: ResultStore,
        monitor: WorkerMonitor,
        background: BackgroundTasksExecutor,
        celery: CeleryExecutor,
        registry: TaskRegistry,
        hooks: TaskHooks,
        deadline: float,
        interval: float,
        may_run_locally: Callable[[TaskSpec], bool],
    ) -> None:
        self.store = store
        self.monitor = monitor
        self.background = background
        self.celery = celery
        self.registry = registry
        self.hooks = hooks
        self.deadline = deadline
        self.interval = interval
        self.may_run_locally = may_run_locally
        # In memory, by task id: only this process published them. Entries leave once they are
        # past the deadline (taken back, reported, or left to a live pool) or cancelled.
        self._sent: dict[str, _Sent] = {}
        self._task: asyncio.Task[None] | None = None
        # Strong references to fire-and-forget revokes (the loop keeps only weak ones).
        self._revokes: set[asyncio.Task[bool]] = set()

    def __len__(self) -> int:
        return len(self._sent)

    def track(self, record: TaskResult, countdown: float | None) -> None:
        """The record's task was just published to record.queue, to start after `countdown` s."""
        self._sent[record.task_id] = _Sent(
            name=record.name, queue=record.queue, due_at=time.monotonic() + (countdown or 0.0)
        )

    def forget(self, task_id: str) -> None:
        self._sent.pop(task_id, None)

    async def check(self) -> int:
        """Report (and, when allowed, take back) tasks past their deadline while no worker is
        live for their queue; returns how many were taken back. Safe to run concurrently:
        each task is looked at by one check, and taken back by one CAS."""
        now = time.monotonic()
        taken = 0
        for task_id, sent in list(self._sent.items()):
            if now - sent.due_at < self.deadline:
                continue
            if self._sent.pop(task_id, None) is None:
                continue  # another check is handling it
            if self.monitor.live_workers(sent.queue) > 0:
                continue  # served, just backlogged
            try:
                if await self._overdue(task_id, sent):
                    taken += 1
            except StoreUnavailable as exc:
                log.warning("dispatch deadline check of task %s postponed: %s", task_id, exc)
                self._sent.setdefault(task_id, sent)
        return taken

    async def _overdue(self, task_id: str, sent: _Sent) -> bool:
        record = await self.store.get(task_id)
        if record is None or record.status is not TaskStatus.PENDING or record.executor != "celery":
            return False  # started (or retrying) on a worker, finished, cancelled or expired
        try:
            spec: TaskSpec | None = self.registry.get(sent.name)
        except UnknownTaskError:
            spec = None
        movable = spec is not None and spec.idempotent and self.may_run_locally(spec)
        moved = await self.store.update(task_id, take_back) if movable else None
        if movable and moved is None:
            return False  # a worker started it (or someone cancelled it) meanwhile
        metrics.count_fallback(sent.name, "deadline")
        log.warning(
            "task %s %s: no worker started it within %g s and none is live for queue %r; %s",
            sent.name,
            task_id,
            self.deadline,
            sent.queue,
            "running it in-process"
            if moved
            else "left queued (not idempotent, or not allowed to run in-process)",
            extra={"task_id": task_id, "task": sent.name, "queue": sent.queue},
        )
        if moved is None:
            return False
        try:
            route = Route(executor=moved.executor, queue=moved.queue, priority=moved.priority)
            await self.background.dispatch(moved, route)
        except ExecutorUnavailable as exc:
            await mark_interrupted(self.store, task_id, f"not dispatched: {exc}", self.hooks)
            return False
        self._revoke_later(task_id)
        return True

    def _revoke_later(self, task_id: str) -> None:
        # Best effort and not awaited: with the broker down each revoke waits out its timeout,
        # and the record's executor already keeps a late worker from running the task.
        if not self.monitor.broker_up:
            return
        job = asyncio.get_running_loop().create_task(self.celery.revoke(task_id))
        self._revokes.add(job)
        job.add_done_callback(self._revokes.discard)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check every `interval` seconds on the running loop (idempotent)."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._watch(), name="tasklane-dispatch-deadline")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([task], timeout=5)
        for job in list(self._revokes):
            job.cancel()

    async def _watch(self) -> None:
        current = asyncio.current_task()
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a bug must not end the checks for good
                log.exception("dispatch deadline check crashed")
            if current is not None and current.cancelling():
                return  # a cancel absorbed as a store error inside the check: honour it
