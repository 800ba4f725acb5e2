"""Reusable daemon threads for blocking calls that coroutines await: sync task bodies and
CeleryExecutor's broker publishes, one pool class for both.

Why not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a sync task stuck in
a long call, or a publish stuck on a black-holed broker, would hold a SIGTERM'd pod past its grace
period (after the task's record was already marked Interrupted). Nobody joins these threads.

Why reuse them: starting a thread per call cost more than the call itself (a short sync body,
bench (c); for a publish, about four times the publish). A thread that finishes a job takes the
next waiting one, else parks for IDLE_SECONDS before it exits. A call that never returns simply
keeps its thread; the next call gets another.

The runner's sync bodies use an unbounded pool (its concurrency semaphore bounds how many run;
the threads are separate from Starlette's, so tasks never starve request handlers).
CeleryExecutor bounds its pool to `publish_threads` and each call by publish_timeout: a job whose
caller gave up before a thread picked it is skipped, so a backlog queued during a broker outage
is not published late (one already running may still land, which the executors tolerate: see
executors/celery.py). A forked child (Celery prefork) inherits no threads, so every pool forgets
the parent's there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import queue
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a parked thread waits for another job before it exits.
IDLE_SECONDS = 30.0

_NO_KWARGS: Mapping[str, Any] = {}


class _Job:
    """One call, run on a pool thread and settled on the caller's loop."""

    __slots__ = ("abandoned", "args", "context", "func", "future", "kwargs", "label", "loop")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        label: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        #: The thread's name while it runs this job (a sync body's name in tracebacks and dumps).
        self.label = label
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.context = contextvars.copy_context()
        #: Set on the loop when a caller with a timeout stopped waiting; read by the thread.
        self.abandoned = False

    def run(self) -> None:
        if self.abandoned:
            return  # its caller timed out before a thread picked it: too late to run it
        if self.label is not None:
            threading.current_thread().name = self.label
        try:
            value = self.context.run(self.func, *self.args, **self.kwargs)
        except BaseException as exc:  # delivered to the awaiting coroutine, not lost
            outcome: tuple[BaseException | None, Any] = (exc, None)
        else:
            outcome = (None, value)
        # RuntimeError: the caller's loop closed meanwhile, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, *outcome)


def _settle(future: asyncio.Future[Any], error: BaseException | None, value: Any) -> None:
    if future.done():
        return  # the caller gave up (timeout, cancel, shutdown); nothing to deliver
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _Worker:
    """One reusable daemon thread; it waits on its own queue for its next job (None: exit)."""

    def __init__(self, pool: DaemonThreads, name: str) -> None:
        self.pool = pool
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self.pool.idle_seconds)
            except queue.Empty:
                if self.pool.retire(self):
                    return
                continue  # handed a job (or stopped) just as it timed out: it is on its way
            if job is None:
                return
            while job is not None:
                job.run()
                job = self.pool.after(self)


class DaemonThreads:
    """Daemon threads, reused and never joined at exit, that run blocking calls for coroutines.

    `limit` bounds the threads; a call made while all of them are busy waits in a backlog.
    """

    def __init__(
        self, name: str, *, limit: int | None = None, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a thread pool needs at least one thread, not {limit}")
        self.name = name
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.lock = threading.Lock()
        #: Parked threads; the most recently used is handed the next job (warm caches, and the
        #: older ones time out).
        self.idle: list[_Worker] = []
        #: Jobs waiting for a thread while `limit` threads are busy, oldest first.
        self.backlog: collections.deque[_Job] = collections.deque()
        #: Threads started and neither retired nor stopped.
        self.workers: set[_Worker] = set()
        self._started = 0
        _pools.add(self)

    async def call(self, func: Callable[..., T], /, *args: Any, timeout: float | None = None) -> T:  # noqa: ASYNC109
        """func(*args) on a pool thread; its result, or its exception re-raised here.

        Raises TimeoutError after `timeout` seconds; the call is then skipped if no thread
        had started it yet.
        """
        job = self.submit(func, args, _NO_KWARGS, None)
        if timeout is None:
            return await job.future
        try:
            async with asyncio.timeout(timeout):
                return await job.future
        except BaseException:
            # Timed out or cancelled: a thread that has not picked the job yet skips it.
            job.abandoned = True
            raise

    def submit(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        label: str | None,
    ) -> _Job:
        """Hand func(*args, **kwargs) to a parked thread, a new one, or the backlog."""
        job = _Job(func, args, kwargs, label, asyncio.get_running_loop())
        with self.lock:
            if self.idle:
                worker = self.idle.pop()
                new = False
            elif self.limit is None or len(self.workers) < self.limit:
                worker = _Worker(self, f"{self.name}-{self._started}")
                self._started += 1
                self.workers.add(worker)
                new = True
            else:
                self.backlog.append(job)
                return job
        worker.jobs.put(job)
        if new:
            worker.thread.start()  # outside the lock: starting a thread takes a while
        return job

    def after(self, worker: _Worker) -> _Job | None:
        """The worker's next job from the backlog, or None once it is parked (or told to exit)."""
        with self.lock:
            if self.backlog:
                return self.backlog.popleft()
            if worker in self.workers:
                self.idle.append(worker)
            else:
                worker.jobs.put(None)  # stopped while busy: exit now that the job is done
            return None

    def retire(self, worker: _Worker) -> bool:
        """Remove a parked worker that timed out; False when a job was just handed to it."""
        with self.lock:
            if worker in self.idle:
                self.idle.remove(worker)
                self.workers.discard(worker)
                return True
            return False

    def stop(self) -> None:
        """Let the threads finish their current job (and the backlog) and exit; a later call
        starts new ones."""
        with self.lock:
            for worker in self.idle:
                worker.jobs.put(None)
            self.idle = []
            self.workers = set()

    @property
    def running(self) -> int:
        """Threads started and not yet retired or stopped (diagnostics, tests)."""
        with self.lock:
            return sum(worker.thread.is_alive() for worker in self.workers)

    def forget(self) -> None:
        """In a forked child: none of the parent's threads exist here."""
        self.lock = threading.Lock()
        self.idle = []
        self.backlog = collections.deque()
        self.workers = set()


_pools: weakref.WeakSet[DaemonThreads] = weakref.WeakSet()


def _forget_in_child() -> None:
    for pool in list(_pools):
        pool.forget()


os.register_at_fork(after_in_child=_forget_in_child)

#: Sync task bodies: unbounded here, the runner's semaphore bounds them.
_threads = DaemonThreads("tasklane-sync")


async def run_in_daemon_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call func(*args, **kwargs) on a sync-body thread named after it; return its result."""
    job = _threads.submit(func, args, kwargs, f"tasklane-sync-{getattr(func, '__name__', 'task')}")
    return await job.future
