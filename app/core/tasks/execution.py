"""The one task lifecycle both planes share (DESIGN.md §3).

load record → STARTED → call with a TaskContext and the spec's timeout → SUCCESS | FAILURE |
RETRY decision → write the record and one log line per transition. The in-process runner and
the Celery task wrapper both call execute(); only *how to wait* before a retry differs, so the
decision comes back as Outcome.retry_in and the caller schedules the next attempt its own way.
A task with a rate limit asks the limiter right before its STARTED write (rate_limits.py); a
refused start comes back the same way, as Outcome.rate_wait, with the record still waiting.

Every write after STARTED is guarded by (status is STARTED and attempts is ours): when shutdown,
a reaper or a timeout has already settled the record, a late finish changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from app.core.tasks.arguments import NOT_PLAIN, plain_json_copy, storable_problem
from app.core.tasks.context import TaskContext
from app.core.tasks.errors import (
    Interrupted,
    InvalidTaskResult,
    StoreUnavailable,
    TaskCancelled,
    TaskTimeout,
    UnknownTaskError,
)
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import (
    WAITING_STATUSES,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskStatus,
    utcnow,
)
from app.core.tasks.rate_limits import UNREACHABLE_RECHECK, RateLimit, RateLimits
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.store import NO_RIDERS, ResultStore, Riders
from app.core.tasks.threads import run_in_daemon_thread

if TYPE_CHECKING:
    from app.core.tasks.rate_limits import Limiter

#: "host:pid", written into records so an operator can find the process that ran a task.
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

#: Backoff of an outcome write the store refused: 0.1 s, doubling up to 5 s, with no limit.
#: The outcome exists only in this process; giving up would leave the record STARTED under a
#: live owner, which nothing settles. Only the process stopping ends the wait (a cancel here;
#: its death otherwise, which the reapers and the worker take-over already handle). A worker
#: holds its pool slot meanwhile, which costs nothing while its store is away.
_OUTCOME_RETRY_FIRST, _OUTCOME_RETRY_MAX = 0.1, 5.0

log = logging.getLogger("tasklane.tasks")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one execute() call did. retry_in is set when another attempt is due; rate_wait
    when the task waits for its rate-limit slot (not started, no attempt used): seconds until
    it should come back and run execute() again."""

    record: TaskResult | None
    ran: bool
    retry_in: float | None = None
    rate_wait: float | None = None


def retry_delay(spec: TaskSpec, attempt: int) -> float:
    """Exponential backoff from spec.backoff, capped at spec.backoff_max, with "equal jitter"
    (half fixed, half random) so a burst of failures does not retry in lockstep."""
    delay = min(spec.backoff_max, spec.backoff * (2 ** max(attempt - 1, 0)))
    return delay / 2 + random.uniform(0, delay / 2)


async def execute(
    task_id: str,
    *,
    registry: TaskRegistry,
    store: ResultStore,
    executor: str,
    hooks: TaskHooks,
    worker: str = WORKER_NAME,
    on_context: Callable[[TaskContext], None] | None = None,
    record: TaskResult | None = None,
    riders: Riders = NO_RIDERS,
    rate_limits: RateLimits | None = None,
) -> Outcome:
    """Run one attempt of the task if its record is waiting (PENDING or RETRY); otherwise
    (cancelled, finished, expired) do nothing and return ran=False.

    `record`: the record as the caller just read it (a Celery worker checks it first), which
    saves a read; a stale one is harmless (store.update's `expected` is only a hint).
    `riders`: Redis commands bracketing the attempt (a worker's active-set entry): `before`
    rides on the STARTED write, `after` on the final one. With ran=False, `before` may have
    run and `after` has not: undoing it is the caller's.
    `rate_limits`: the process's limits; a limited task refused a start returns rate_wait.
    """
    if record is None:
        record = await store.get(task_id)
    if record is None:
        return Outcome(record=None, ran=False)
    try:
        spec = registry.get(record.name)
    except UnknownTaskError as exc:
        # A worker built from other code than the api: finish the record instead of leaving it.
        failed = await _settle_waiting(store, task_id, TaskStatus.FAILURE, exc, hooks)
        return Outcome(record=failed, ran=False)

    if rate_limits is not None:
        limit = rate_limits.limit_for(spec)  # a dict read: unlimited tasks make no call
        if limit is not None and _to_started(record, executor, worker) is not None:
            waiting = await _wait_for_rate(store, rate_limits.limiter, spec, limit, record, hooks)
            if waiting is not None:
                return waiting

    started = await store.update(
        task_id,
        lambda current: _to_started(current, executor, worker),
        expected=record,
        riders=Riders(before=riders.before),
    )
    if started is None:
        current = await store.get(task_id)
        if (
            current is not None
            and current.status in (TaskStatus.PENDING, TaskStatus.RETRY)
            and current.cancel_requested
        ):
            # Waiting but cancel_requested: it never ran, so it ends CANCELLED.
            cancelled = await _settle_waiting(
                store, task_id, TaskStatus.CANCELLED, TaskCancelled("cancelled before start"), hooks
            )
            return Outcome(record=cancelled, ran=False)
        return Outcome(record=current, ran=False)
    hooks.on_transition(started, record.status)

    loop = asyncio.get_running_loop()
    ctx = TaskContext(
        task_id=task_id, name=spec.name, attempt=started.attempts, store=store, loop=loop
    )
    done = Riders(after=riders.after)
    if on_context is not None:
        on_context(ctx)
    attempt = started.attempts
    try:
        value = await _call(spec, ctx, started)
    except asyncio.CancelledError:
        # The runner cancelled us: a user's cancel (flag set first) or shutdown.
        # Not patient: a runner shutting down must not wait for a store that is away.
        if ctx.cancelled() and not ctx.interrupted:
            final = await _finish(
                store, task_id, started, done, TaskStatus.CANCELLED, error=None, patient=False
            )
        else:
            error = TaskError.from_exception(Interrupted("the runner stopped during the task"))
            final = await _finish(
                store, task_id, started, done, TaskStatus.FAILURE, error=error, patient=False
            )
        _notify(hooks, final)
        raise
    except TaskCancelled:
        final = await _finish(store, task_id, started, done, TaskStatus.CANCELLED, error=None)
        _notify(hooks, final)
        return Outcome(record=final, ran=True)
    except (Exception, SystemExit) as exc:
        # SystemExit too: a task body calling sys.exit() must fail its task, not stop the
        # process's event loop (and with it the api).
        error = TaskError.from_exception(exc)
        if attempt <= spec.retries and not ctx.cancelled():
            delay = retry_delay(spec, attempt)
            final = await _finish(store, task_id, started, done, TaskStatus.RETRY, error=error)
            _notify(hooks, final)
            return Outcome(record=final, ran=True, retry_in=delay if final else None)
        final = await _finish(store, task_id, started, done, TaskStatus.FAILURE, error=error)
        _notify(hooks, final)
        return Outcome(record=final, ran=True)

    try:
        stored_value = _stored(value)
    except (TypeError, ValueError, RecursionError) as exc:
        problem = InvalidTaskResult(f"{spec.name} returned a value JSON cannot store: {exc}")
        error = TaskError.from_exception(problem)
        final = await _finish(store, task_id, started, done, TaskStatus.FAILURE, error=error)
    else:
        final = await _finish(
            store, task_id, started, done, TaskStatus.SUCCESS, result=stored_value
        )
    _notify(hooks, final)
    return Outcome(record=final, ran=True)


def _stored(value: Any) -> Any:
    """The task's return value as the record keeps it: what a JSON round trip gives.

    Raises TypeError, ValueError or RecursionError for a value JSON cannot store. Plain values
    (None, most results) are copied in one walk instead of checked, dumped and parsed.
    """
    copied = plain_json_copy(value)
    if copied is not NOT_PLAIN:
        return copied
    problem = storable_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return json.loads(json.dumps(value, allow_nan=False))


async def _call(spec: TaskSpec, ctx: TaskContext, record: TaskResult) -> Any:
    """Invoke the task body: coroutines on this loop, sync functions on a daemon thread.

    A sync body cannot be interrupted: on timeout its record fails with TaskTimeout, its
    ctx.cancelled() turns true (which also rules out a retry while the old thread still runs),
    and the thread's late result is discarded. A timed-out async body is cancelled outright, so
    it is retried like any other failure.
    """
    args: list[Any] = [ctx, *record.args] if spec.takes_context else list(record.args)
    if spec.is_async:
        call = spec.func(*args, **record.kwargs)
    else:
        call = run_in_daemon_thread(spec.func, *args, **record.kwargs)
    if spec.timeout is None:
        return await call
    deadline = asyncio.timeout(spec.timeout)
    try:
        async with deadline:
            return await call
    except TimeoutError:
        if not deadline.expired():
            raise  # the task's own TimeoutError (a client's, say): an ordinary, retryable failure
        if not spec.is_async:
            ctx.request_cancel()
        raise TaskTimeout(spec.name, spec.timeout) from None


async def _wait_for_rate(
    store: ResultStore,
    limiter: Limiter,
    spec: TaskSpec,
    limit: RateLimit,
    record: TaskResult,
    hooks: TaskHooks,
) -> Outcome | None:
    """None when the limiter lets the task start now; else the Outcome that makes the caller
    come back at its ticket, with the record saying until when it waits.

    A limiter that cannot be reached makes the task wait UNREACHABLE_RECHECK and ask again:
    never run unlimited (what a limit protects does not get faster when our Redis is away).
    """
    task_id = record.task_id
    try:
        admission = await limiter.admit(
            spec.name, limit, task_id, returning=record.rate_limited_until is not None
        )
    except StoreUnavailable as exc:
        log.warning(
            "rate limiter unavailable, start deferred %g s: %s",
            UNREACHABLE_RECHECK,
            exc,
            extra={"task_id": task_id, "task": spec.name},
        )
        return Outcome(record=record, ran=False, rate_wait=UNREACHABLE_RECHECK)
    if admission.allowed:
        return None
    until = utcnow() + timedelta(seconds=admission.wait)

    def mark(current: TaskResult) -> TaskResult | None:
        if current.status not in WAITING_STATUSES or current.cancel_requested:
            return None
        return current.replace(rate_limited_until=until)

    marked = await store.update(task_id, mark, expected=record)
    if marked is None:
        # Cancelled or taken meanwhile: it waits no more, and the STARTED write that follows
        # finds out what happened (and settles a cancel).
        await limiter.forget(spec.name, task_id)
        return None
    hooks.on_rate_limited(marked, admission.wait)
    return Outcome(record=marked, ran=False, rate_wait=admission.wait)


def _to_started(record: TaskResult, executor: str, worker: str) -> TaskResult | None:
    if record.status not in (TaskStatus.PENDING, TaskStatus.RETRY) or record.cancel_requested:
        return None
    if record.executor != executor:
        # The record was routed elsewhere (a hybrid took a queued task back to run it locally):
        # a late copy of the message must not run it a second time.
        return None
    return record.replace(
        status=TaskStatus.STARTED,
        attempts=record.attempts + 1,
        started_at=utcnow(),
        finished_at=None,
        executor=executor,
        worker=worker,
        rate_limited_until=None,
    )


async def _finish(
    store: ResultStore,
    task_id: str,
    started: TaskResult,
    riders: Riders,
    status: TaskStatus,
    *,
    error: TaskError | None = None,
    result: Any = None,
    patient: bool = True,
) -> TaskResult | None:
    """Settle the attempt `started` (the STARTED record this process wrote) as `status`;
    `riders` go with that write (or on their own when it is already settled).

    `patient`: while the store does not answer, keep retrying (see _OUTCOME_RETRY_FIRST)
    instead of raising StoreUnavailable.
    """
    attempt = started.attempts

    def apply(record: TaskResult) -> TaskResult | None:
        if record.status is not TaskStatus.STARTED or record.attempts != attempt:
            return None  # already settled by shutdown, a reaper or a timeout
        return record.replace(
            status=status,
            result=result,
            error=error,
            finished_at=None if status is TaskStatus.RETRY else utcnow(),
        )

    # Usually nothing changed since STARTED (a progress report or a cancel flag would have):
    # the hint makes this write one round trip on Redis.
    try:
        return await store.update(task_id, apply, expected=started, riders=riders)
    except StoreUnavailable as exc:
        if not patient:
            raise
        first_error = exc
    log.warning(
        "result store unavailable, outcome kept until it answers: %s",
        first_error,
        extra={"task_id": task_id, "status": status.value},
    )
    delay = _OUTCOME_RETRY_FIRST
    while True:
        await asyncio.sleep(delay)
        try:
            # No `expected`: whatever the store held across the outage is read afresh.
            written = await store.update(task_id, apply, riders=riders)
        except StoreUnavailable:
            delay = min(delay * 2, _OUTCOME_RETRY_MAX)
            continue
        log.info("result store back, outcome written", extra={"task_id": task_id})
        return written


async def _settle_waiting(
    store: ResultStore,
    task_id: str,
    status: TaskStatus,
    exc: BaseException,
    hooks: TaskHooks,
) -> TaskResult | None:
    """Finish a record that never started (cancelled while waiting, unknown name)."""
    error = None if status is TaskStatus.CANCELLED else TaskError.from_exception(exc)

    def apply(record: TaskResult) -> TaskResult | None:
        if record.status not in (TaskStatus.PENDING, TaskStatus.RETRY):
            return None
        return record.replace(status=status, error=error, finished_at=utcnow())

    previous = await store.get(task_id)
    settled = await store.update(task_id, apply)
    if settled is not None:
        hooks.on_transition(settled, previous.status if previous else None)
    return settled


def _notify(hooks: TaskHooks, record: TaskResult | None) -> None:
    if record is not None:
        hooks.on_transition(record, TaskStatus.STARTED)


async def mark_interrupted(
    store: ResultStore, task_id: str, reason: str, hooks: TaskHooks
) -> TaskResult | None:
    """Settle an unfinished record as FAILURE Interrupted (shutdown drain, dead-runner reaper)."""
    error = TaskError.from_exception(Interrupted(reason))
    previous: list[TaskStatus] = []

    def apply(record: TaskResult) -> TaskResult | None:
        if record.finished:
            return None
        previous.append(record.status)
        return record.replace(status=TaskStatus.FAILURE, error=error, finished_at=utcnow())

    settled = await store.update(task_id, apply)
    if settled is not None:
        hooks.on_transition(settled, previous[-1] if previous else None)
    return settled
