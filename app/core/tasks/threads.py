"""Runs a sync task body on a daemon thread and awaits it from the event loop.

Why not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one sync task stuck
in a long call would hold a SIGTERM'd pod past its grace period after its record was already
marked Interrupted. The runner's concurrency semaphore bounds how many of these threads are
busy, and they are separate from Starlette's thread pool, so tasks never starve request
handlers.

Threads are daemon threads *and* reused: starting a thread per task cost more than the task
itself for short bodies (bench (c)), so a thread that finishes a body waits IDLE_SECONDS for the
next one before it exits. A body that never returns simply keeps its thread; the next body gets
another. A forked child (Celery prefork) inherits no threads, so it forgets the parent's idle
ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

#: How long a thread waits for another body before it exits.
IDLE_SECONDS = 30.0

Job = Callable[[], None]


class _Worker:
    """One reusable daemon thread; it waits on its own queue for the next job."""

    def __init__(self, pool: _IdleThreads) -> None:
        self.pool = pool
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="tasklane-sync", daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if self.pool.retire(self):
                    return
                continue  # handed a job just as it timed out: it is on its way
            job()
            self.pool.park(self)


class _IdleThreads:
    """The idle workers, most recently used first (warm caches, and older ones time out)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def submit(self, job: Job) -> None:
        with self.lock:
            worker = self.idle.pop() if self.idle else None
        if worker is None:
            worker = _Worker(self)
            worker.jobs.put(job)
            worker.thread.start()
        else:
            worker.jobs.put(job)

    def park(self, worker: _Worker) -> None:
        with self.lock:
            self.idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """Remove an idle worker that timed out; False when a job was just handed to it."""
        with self.lock:
            if worker in self.idle:
                self.idle.remove(worker)
                return True
            return False

    def forget(self) -> None:
        self.lock = threading.Lock()
        self.idle = []


_threads = _IdleThreads()
os.register_at_fork(after_in_child=_threads.forget)


async def run_in_daemon_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call func(*args, **kwargs) on a daemon thread; the awaiting side gets its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: BaseException | None, value: Any) -> None:
        if future.done():
            return  # the awaiting side gave up (timeout, shutdown); nothing to deliver
        if outcome is not None:
            future.set_exception(outcome)
        else:
            future.set_result(value)

    name = f"tasklane-sync-{getattr(func, '__name__', 'task')}"

    def job() -> None:
        threading.current_thread().name = name  # the body's name in tracebacks and dumps
        try:
            value = context.run(func, *args, **kwargs)
        except BaseException as exc:  # delivered to the awaiting coroutine, not lost
            outcome: tuple[BaseException | None, Any] = (exc, None)
        else:
            outcome = (None, value)
        # RuntimeError: the loop closed while this task ran, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    _threads.submit(job)
    return await future
