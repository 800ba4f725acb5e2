"""A few long-lived daemon threads for CeleryExecutor's blocking broker calls.

kombu is synchronous, so a publish cannot run on the event loop. Starting a new thread per
publish cost about four times the publish itself (thread start plus GIL hand-offs, profiled for
issue 6); these threads start with the first publish and then wait on one job queue.

Daemon threads, not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a
publish stuck on a black-holed broker would hold a SIGTERM'd pod past its grace period. The
caller bounds every call with a timeout (publish_timeout); a job whose caller gave up before a
thread picked it is skipped, so a backlog queued during an outage is not published late (one
already running may still land, which the executors tolerate: see executors/celery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Job:
    __slots__ = ("abandoned", "args", "context", "func", "future", "loop")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.func = func
        self.args = args
        self.loop = loop
        self.future = future
        self.context = contextvars.copy_context()
        #: Set on the loop when the caller stopped waiting; read by the thread before running.
        self.abandoned = False


def _settle(future: asyncio.Future[Any], error: BaseException | None, value: Any) -> None:
    if future.done():
        return  # the caller gave up (timeout, cancel); nothing to deliver
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Publisher:
    """Runs blocking calls on `threads` daemon threads for coroutines that await them."""

    def __init__(self, *, threads: int = 4, name: str = "tasklane-publish") -> None:
        if threads < 1:
            raise ValueError(f"a Publisher needs at least one thread, not {threads}")
        self.size = threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def call(self, func: Callable[..., T], /, *args: Any, timeout: float) -> T:  # noqa: ASYNC109
        """func(*args) on a publisher thread; its result, or its exception re-raised here.

        Raises TimeoutError after `timeout` seconds; the call is then skipped if no thread
        had started it yet.
        """
        loop = asyncio.get_running_loop()
        job = _Job(func, args, loop, loop.create_future())
        self._ensure_threads()
        self._jobs.put(job)
        try:
            async with asyncio.timeout(timeout):
                return await job.future
        except BaseException:
            # Timed out or cancelled: a thread that has not picked the job yet skips it.
            job.abandoned = True
            raise

    def stop(self) -> None:
        """Let the threads finish their current job and exit (a later call starts new ones)."""
        with self._lock:
            for _ in self._threads:
                self._jobs.put(None)
            self._threads = []

    @property
    def running(self) -> int:
        """Threads started and not yet stopped (diagnostics, tests)."""
        with self._lock:
            return sum(thread.is_alive() for thread in self._threads)

    def _ensure_threads(self) -> None:
        if len(self._threads) == self.size:
            return  # the common case, without the lock: the list only grows to `size` under it
        with self._lock:
            while len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.abandoned:
                continue
            try:
                value = job.context.run(job.func, *job.args)
            except BaseException as exc:  # delivered to the awaiting coroutine, not lost
                outcome: tuple[BaseException | None, Any] = (exc, None)
            else:
                outcome = (None, value)
            # RuntimeError: the caller's loop closed meanwhile, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_settle, job.future, *outcome)
