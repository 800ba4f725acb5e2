"""TaskContext: what a running task may ask of the system (report progress, notice a cancel).

A task opts in with @task(takes_context=True) and receives the context as its first argument.
The same object works for `async def` tasks on the event loop and for sync tasks on a runner
thread: the sync methods hop onto the owning loop, the async ones are awaited directly.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from app.core.tasks.errors import TaskCancelled
from app.core.tasks.models import Progress, TaskResult, TaskStatus

if TYPE_CHECKING:
    from app.core.tasks.store import ResultStore


class TaskContext:
    """Handle given to one attempt of one task."""

    def __init__(
        self,
        *,
        task_id: str,
        name: str,
        attempt: int,
        store: ResultStore,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.attempt = attempt
        self._store = store
        self._loop = loop
        # threading.Event, not asyncio.Event: sync tasks poll it from their own thread.
        self._cancel = threading.Event()
        self._interrupted = False
        # Progress writes scheduled from the loop itself; the loop keeps only weak references.
        self._pending_writes: set[asyncio.Task[None]] = set()

    def cancelled(self) -> bool:
        """Has someone asked this task to stop? Long sync loops should check it and return."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise TaskCancelled when a cancel was requested, so the record ends CANCELLED."""
        if self._cancel.is_set():
            raise TaskCancelled(f"Task {self.task_id} was cancelled while running.")

    def request_cancel(self) -> None:
        """Set the cancel flag (the runner calls this; tasks only read it)."""
        self._cancel.set()

    def request_interrupt(self) -> None:
        """Shutdown is stopping the task: it ends FAILURE Interrupted, not CANCELLED."""
        self._interrupted = True
        self._cancel.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    async def aprogress(self, fraction: float, message: str = "") -> None:
        """Record progress (0.0-1.0) on the task record; also picks up a cancel requested
        through another process sharing the store."""
        progress = Progress(fraction=min(max(float(fraction), 0.0), 1.0), message=message[:500])

        def apply(record: TaskResult) -> TaskResult | None:
            if record.cancel_requested:
                self._cancel.set()
            if record.status is not TaskStatus.STARTED:
                return None
            return record.replace(progress=progress)

        await self._store.update(self.task_id, apply)

    def progress(self, fraction: float, message: str = "") -> None:
        """See aprogress(). Blocks a sync task's thread until the record is written."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            # Called from async code on the loop itself: blocking would deadlock, so schedule.
            write = self._loop.create_task(self.aprogress(fraction, message))
            self._pending_writes.add(write)
            write.add_done_callback(self._pending_writes.discard)
            return
        future = asyncio.run_coroutine_threadsafe(self.aprogress(fraction, message), self._loop)
        future.result(timeout=30)
