"""BackgroundTasksExecutor: the in-process runner of single mode (DESIGN.md §3).

Own runner, not Starlette's: `async def` tasks run as asyncio tasks on the app's loop, sync ones
on daemon threads, both under one set of concurrency slots handed out by priority (0 first, FIFO
within a level: executors/gate.py). Countdowns, retries and tasks waiting for their rate-limit
slot (rate_limits.py) wait on the loop with no slot held. Cancel drops a waiting task, cancels a
running async one, and sets ctx.cancelled() for a running sync one. stop() drains for a grace
period, then settles the rest as FAILURE Interrupted; a runner that died without stop() is found
by its expired heartbeat and its tasks settled the same way by any other runner sharing the
store (reap()).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from app.core.tasks.context import TaskContext
from app.core.tasks.errors import ExecutorUnavailable, StoreUnavailable, UnknownTaskError
from app.core.tasks.execution import Outcome, execute, mark_interrupted
from app.core.tasks.executors.base import Executor
from app.core.tasks.executors.gate import PriorityGate
from app.core.tasks.handoff import defer
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import DEFAULT_PRIORITY
from app.core.tasks.rate_limits import UNREACHABLE_RECHECK
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.executors.base import Route
    from app.core.tasks.models import TaskResult
    from app.core.tasks.rate_limits import RateLimits
    from app.core.tasks.store import ResultStore

log = logging.getLogger("tasklane.runner")


class BackgroundTasksExecutor(Executor):
    name = "background"
    supports_cancel_running = True
    supports_retry = True
    supports_priority = True
    supports_delay = True

    def __init__(
        self,
        store: ResultStore,
        *,
        registry: TaskRegistry = default_registry,
        hooks: TaskHooks | None = None,
        concurrency: int = 8,
        heartbeat_interval: float = 5.0,
        runner_id: str | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.store = store
        self.rate_limits = rate_limits
        self.registry = registry
        self.hooks = hooks or TaskHooks()
        self.concurrency = concurrency
        self.heartbeat_interval = heartbeat_interval
        self.runner_id = runner_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = True
        self._gate: PriorityGate | None = None
        # Strong references: the loop keeps only weak ones, and a collected task vanishes.
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._contexts: dict[str, TaskContext] = {}
        self._running: set[str] = set()
        # Jobs sleeping through a countdown or a retry backoff: not started work, so shutdown
        # settles them at once instead of waiting out the grace period for them.
        self._sleeping: set[str] = set()
        self._keepalive: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind to the running loop; safe to call again (lazily from dispatch, or per loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        # A new loop (a script or test running several): state of the old one is unusable.
        self._loop = loop
        self._accepting = True
        self._gate = PriorityGate(self.concurrency)
        self._jobs, self._contexts, self._running, self._sleeping = {}, {}, set(), set()
        if self.store.kind != "memory":
            # Only a shared store has other runners whose crashes we must notice.
            await self.store.heartbeat(self.runner_id, ttl=3 * self.heartbeat_interval)
            self._keepalive = loop.create_task(self._keep_alive(), name="tasklane-runner-heartbeat")
            await self.reap()

    async def stop(self, grace: float) -> None:
        self._accepting = False
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._loop is not asyncio.get_running_loop():
            return
        for task_id in list(self._sleeping):
            self._jobs[task_id].cancel()
        jobs = [job for task_id, job in self._jobs.items() if task_id not in self._sleeping]
        if jobs:
            log.info("draining %d task(s) for up to %.1f s", len(jobs), grace)
            await asyncio.wait(jobs, timeout=grace)
        try:
            claims = await self.store.claims()
        except StoreUnavailable:
            claims = {}
        mine = set(self._jobs) | {tid for tid, owner in claims.items() if owner == self.runner_id}
        for task_id, job in list(self._jobs.items()):
            ctx = self._contexts.get(task_id)
            if ctx is not None:
                ctx.request_interrupt()
            job.cancel()
        if self._jobs:
            await asyncio.wait(list(self._jobs.values()), timeout=2.0)
        reason = "the process shut down before the task finished"
        with contextlib.suppress(StoreUnavailable):
            for task_id in sorted(mine):
                await mark_interrupted(self.store, task_id, reason, self.hooks)
            await self.store.release(mine)
            await self.store.forget_runner(self.runner_id)

    async def __aenter__(self) -> BackgroundTasksExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(grace=0)

    # -- dispatch and cancel ---------------------------------------------------------------

    async def dispatch(
        self, record: TaskResult, route: Route, *, background_tasks: BackgroundTasks | None = None
    ) -> None:
        await self.start()
        if not self._accepting:
            raise ExecutorUnavailable("the in-process runner is shutting down", retry_after=2)
        await self.store.claim(record.task_id, self.runner_id)
        task_id, delay = record.task_id, route.countdown or 0.0
        priority = DEFAULT_PRIORITY if route.priority is None else route.priority

        def start() -> None:
            self._schedule(task_id, delay, priority)

        if background_tasks is not None:
            defer(background_tasks, start)
        else:
            start()

    async def cancel(self, task_id: str) -> None:
        job = self._jobs.get(task_id)
        ctx = self._contexts.get(task_id)
        if ctx is None:
            if job is not None:
                job.cancel()  # waiting (countdown, retry backoff or a free slot): just drop it
                # A job cancelled before its first step never reaches _run's `finally`, so its
                # claim would outlive the (already CANCELLED) record: release it here.
                with contextlib.suppress(StoreUnavailable):
                    await self.store.release([task_id])
            return
        ctx.request_cancel()
        try:
            is_async = self.registry.get(ctx.name).is_async
        except UnknownTaskError:
            is_async = False
        if is_async and job is not None:
            job.cancel()  # a sync body cannot be interrupted: it sees ctx.cancelled() instead

    # -- state for routing and diagnostics -------------------------------------------------

    @property
    def saturated(self) -> bool:
        """Every slot is busy and more tasks are waiting for one."""
        return len(self._jobs) >= self.concurrency

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            runner_id=self.runner_id,
            concurrency=self.concurrency,
            running=len(self._running),
            waiting=len(self._jobs) - len(self._running),
            accepting=self._accepting,
        )
        return info

    async def wait_all(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until nothing is running or waiting (tests, scripts)."""
        async with asyncio.timeout(timeout):
            while self._jobs:
                await asyncio.wait(list(self._jobs.values()))

    # -- internals -------------------------------------------------------------------------

    def _schedule(self, task_id: str, delay: float, priority: int) -> None:
        if task_id in self._jobs or self._loop is None or self._loop.is_closed():
            return
        if not self._accepting:
            # A hand-off that fired after stop(): stop() already settled every claimed record.
            return
        if delay > 0:
            # Counted as sleeping from now: stop() may run before the job's first step.
            self._sleeping.add(task_id)
        job = self._loop.create_task(
            self._run(task_id, delay, priority), name=f"tasklane:{task_id}"
        )
        self._jobs[task_id] = job

        def forget(done: asyncio.Task[None]) -> None:
            if self._jobs.get(task_id) is done:
                del self._jobs[task_id]
                self._sleeping.discard(task_id)

        job.add_done_callback(forget)

    async def _run(self, task_id: str, delay: float, priority: int) -> None:
        assert self._gate is not None
        settled = False
        rate_limited: str | None = None  # the task's name once it waits for its rate slot
        try:
            if delay > 0:
                await self._sleep(task_id, delay)
            while True:
                async with self._gate.slot(priority):
                    self._running.add(task_id)
                    try:
                        outcome = await execute(
                            task_id,
                            registry=self.registry,
                            store=self.store,
                            executor=self.name,
                            hooks=self.hooks,
                            on_context=lambda ctx: self._contexts.__setitem__(task_id, ctx),
                            rate_limits=self.rate_limits,
                        )
                    except StoreUnavailable as exc:
                        if rate_limited is None:
                            raise
                        # Redis is away while the task waits for its rate slot: it keeps
                        # waiting (never runs unchecked) and asks again.
                        log.warning("task %s: rate check deferred: %s", task_id, exc)
                        outcome = Outcome(record=None, ran=False, rate_wait=UNREACHABLE_RECHECK)
                    finally:
                        self._running.discard(task_id)
                        self._contexts.pop(task_id, None)
                if outcome.rate_wait is not None:
                    # Waiting for its rate slot: like a backoff, without the slot.
                    if outcome.record is not None:
                        rate_limited = outcome.record.name
                    await self._wait_for_rate(task_id, rate_limited, outcome.rate_wait)
                    continue
                if outcome.retry_in is None:
                    settled = True
                    break
                if not self._accepting:
                    break  # shutting down: stop() settles the RETRY record as Interrupted
                await self._sleep(task_id, outcome.retry_in)
        except asyncio.CancelledError:
            settled = self._accepting  # a user cancel settles here; shutdown settles in stop()
        except StoreUnavailable as exc:
            # Redis vanished before the attempt could start (a finished attempt's outcome
            # waits for it inside execute()): keep the claim, so the reaper settles the record
            # as Interrupted if this runner dies.
            log.error("task %s: result store unavailable: %s", task_id, exc)
        except Exception:
            log.exception("runner failed while executing task %s", task_id)
        finally:
            if settled:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.release([task_id])

    async def _sleep(self, task_id: str, seconds: float) -> None:
        self._sleeping.add(task_id)
        try:
            await asyncio.sleep(seconds)
        finally:
            self._sleeping.discard(task_id)

    async def _wait_for_rate(self, task_id: str, name: str | None, seconds: float) -> None:
        """Sleep until the task's rate-limit ticket; cancelled (a user's cancel, shutdown), it
        leaves the limiter's waiting count."""
        try:
            await self._sleep(task_id, seconds)
        except asyncio.CancelledError:
            if self.rate_limits is not None and name is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.rate_limits.limiter.forget(name, task_id)
            raise

    async def _keep_alive(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            beats += 1
            try:
                await self.store.heartbeat(self.runner_id, ttl=3 * self.heartbeat_interval)
                if beats % 3 == 0:
                    await self.reap()
            except StoreUnavailable as exc:
                log.warning("runner heartbeat failed: %s", exc)
            except Exception:
                log.exception("runner heartbeat crashed")
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # redis-py can turn a cancel that lands mid-reconnect into a connection error:
                # honour the cancel anyway, or stop() would leave this loop beating forever.
                return

    async def reap(self) -> int:
        """Settle as Interrupted the unfinished tasks of runners whose heartbeat expired."""
        claims = await self.store.claims()
        others = {owner for owner in claims.values() if owner != self.runner_id}
        if not others:
            return 0
        live = await self.store.live_runners(others)
        dead = [(tid, owner) for tid, owner in claims.items() if owner in others - live]
        for task_id, owner in dead:
            reason = f"runner {owner} stopped before the task finished"
            await mark_interrupted(self.store, task_id, reason, self.hooks)
        await self.store.release(task_id for task_id, _ in dead)
        if dead:
            log.warning("settled %d task(s) of dead runner(s) as Interrupted", len(dead))
        return len(dead)
