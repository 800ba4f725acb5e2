"""What a worker does with one delivered task message (DESIGN.md §3, "CeleryExecutor").

1. The record: a message nobody recorded (a beat entry or `.delay()` from a process without
   the store) gets one, PENDING with executor "celery", before anything runs.
2. Redelivery: a record still STARTED by an attempt that no longer runs (its worker was
   SIGKILLed, or restarted under the same name) is handed back: RETRY for idempotent specs, so
   this message runs it again; FAILURE Interrupted otherwise (never run twice what is not
   idempotent). An attempt that *is* still running elsewhere (a duplicate delivery) is left
   alone and this message is acknowledged.
3. execute(), the lifecycle both planes share, on this process's event loop thread.
4. Bookkeeping: `active:{queue}` and `worker:{host}:active` hold the id while it runs.

The usual case (a record waiting to run) is one coroutine, so one hop to the loop thread per
task, and three Redis round trips: the record's GET, then execute(), given the record just read
so its STARTED and final writes are one round trip each, with the bookkeeping riding in them
(presence.attempt_riders: the entry is added in the STARTED write's step, ahead of it, so the
duplicate check of (2) never sees a STARTED record of a live attempt without its entry; it
goes in the final write's step). Only a record found STARTED (2) leaves the loop for the sync
checks, then comes back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.core.tasks import presence
from app.core.tasks.arguments import normalise_arguments
from app.core.tasks.errors import Interrupted, InvalidTaskArgs
from app.core.tasks.execution import Outcome, execute
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import (
    WAITING_STATUSES,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskStatus,
    utcnow,
)
from app.core.tasks.store import NO_RIDERS, ResultStore
from app.workers.celery_config import time_limit
from app.workers.runtime import Runtime

log = logging.getLogger("tasklane.worker")

#: The executor name Celery workers write into records and that execute() insists on.
CELERY = "celery"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One message as the worker received it."""

    task_id: str
    spec: TaskSpec
    #: The queue it was delivered from (the routing key); active:{queue} is keyed by it.
    queue: str
    #: The worker's node name (celery@host), written into the record's `worker`.
    hostname: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: The message's priority (delivery_info), for a record the worker has to write itself.
    priority: int | None = None


def new_record(
    spec: TaskSpec,
    task_id: str,
    queue: str,
    args: list[Any],
    kwargs: dict[str, Any],
    priority: int | None = None,
) -> TaskResult:
    """A PENDING record for a task Celery (not the TaskManager) is about to run."""
    return TaskResult(
        task_id=task_id,
        name=spec.name,
        status=TaskStatus.PENDING,
        executor=CELERY,
        queue=queue,
        args=args,
        kwargs=kwargs,
        submitted_at=utcnow(),
        priority=priority,
    )


def deliver(delivery: Delivery, rt: Runtime) -> Outcome:
    """Run one attempt of the delivered task if its record lets it; execute()'s outcome."""
    attempted = rt.run(_attempt(delivery, rt))
    if isinstance(attempted, Outcome):
        return attempted
    record = attempted  # a Celery attempt recorded STARTED: a redelivery or a duplicate
    if _still_running(record, delivery.spec, rt):
        log.warning(
            "duplicate delivery of a running task ignored",
            extra={"task_id": delivery.task_id, "task": record.name, "worker": record.worker},
        )
        return Outcome(record=record, ran=False)
    return rt.run(_attempt(delivery, rt, _take_over(record, delivery, rt)))


async def _attempt(
    delivery: Delivery, rt: Runtime, record: TaskResult | None = None
) -> Outcome | TaskResult:
    """The attempt, on the loop thread; without `record` (first pass), a Celery record found
    STARTED comes back instead, for deliver() to settle first with its sync checks."""
    if record is None:
        record = await _ensure_record(delivery, rt.store, rt.hooks)
        if record.executor == CELERY and record.status is TaskStatus.STARTED:
            return record
    runnable = record.executor == CELERY and record.status in WAITING_STATUSES
    bookkeeping = runnable and rt.async_redis is not None
    riders = (
        presence.attempt_riders(rt.keys, delivery.hostname, delivery.task_id, delivery.queue)
        if bookkeeping
        else NO_RIDERS
    )
    try:
        outcome = await execute(
            delivery.task_id,
            registry=rt.registry,
            store=rt.store,
            executor=CELERY,
            hooks=rt.hooks,
            worker=delivery.hostname,
            record=record,
            riders=riders,
            rate_limits=rt.rate_limits,
        )
    except BaseException:
        # The final write (and its riders) may never have been sent: remove the entry here.
        if bookkeeping:
            await _mark_done(rt, delivery)
        raise
    if bookkeeping and not outcome.ran and outcome.rate_wait is None:
        # Not started after all (cancelled, taken, routed elsewhere meanwhile): the entry may
        # have been added with the attempted STARTED write. A rate-limited start attempted no
        # STARTED write, so it added no entry.
        await _mark_done(rt, delivery)
    return outcome


async def settle_abandoned(
    store: ResultStore,
    hooks: TaskHooks,
    task_id: str,
    *,
    owner: str | None,
    spec: TaskSpec,
    error: BaseException,
    retry: bool,
) -> TaskResult | None:
    """Settle a STARTED attempt of `owner` that will never finish: CANCELLED when a cancel was
    requested, RETRY (error kept, attempts kept) when `retry` and the spec is idempotent,
    else FAILURE with `error`. None when the record moved on meanwhile."""
    stored_error = TaskError.from_exception(error)

    def apply(record: TaskResult) -> TaskResult | None:
        if record.status is not TaskStatus.STARTED or record.worker != owner:
            return None
        if record.cancel_requested:
            return record.replace(status=TaskStatus.CANCELLED, finished_at=utcnow())
        if retry and spec.idempotent:
            return record.replace(status=TaskStatus.RETRY, error=stored_error)
        return record.replace(status=TaskStatus.FAILURE, error=stored_error, finished_at=utcnow())

    settled = await store.update(task_id, apply)
    if settled is not None:
        hooks.on_transition(settled, TaskStatus.STARTED)
    return settled


async def _ensure_record(delivery: Delivery, store: ResultStore, hooks: TaskHooks) -> TaskResult:
    record = await store.get(delivery.task_id)
    if record is not None:
        return record
    problem: InvalidTaskArgs | None = None
    try:
        args, kwargs = normalise_arguments(delivery.spec, delivery.args, delivery.kwargs)
    except InvalidTaskArgs as exc:
        # Recorded, then failed: the caller learns why through the status endpoint.
        args, kwargs, problem = [], {}, exc
    fresh = new_record(
        delivery.spec, delivery.task_id, delivery.queue, args, kwargs, delivery.priority
    )
    stored, created = await store.create(fresh)
    if created:
        hooks.on_transition(stored, None)
        if problem is not None:
            error = TaskError.from_exception(problem)

            def fail(current: TaskResult) -> TaskResult | None:
                if current.status is not TaskStatus.PENDING:
                    return None
                return current.replace(status=TaskStatus.FAILURE, error=error, finished_at=utcnow())

            failed = await store.update(delivery.task_id, fail)
            if failed is not None:
                hooks.on_transition(failed, TaskStatus.PENDING)
                return failed
    return stored


def _still_running(record: TaskResult, spec: TaskSpec, rt: Runtime) -> bool:
    if rt.redis is None or record.worker is None:
        return False
    # Celery's hard time limit would have ended it by now, whatever the keys still say (a
    # worker that lost Redis mid-task could not remove its active entry).
    limit = time_limit(spec, rt.settings)
    started = record.started_at
    if limit is not None and started is not None and (utcnow() - started).total_seconds() > limit:
        return False
    try:
        return presence.attempt_running(
            rt.redis,
            rt.keys,
            hostname=record.worker,
            task_id=record.task_id,
            attempt_started=record.started_at,
            interval=rt.settings.worker_heartbeat_interval,
        )
    except (RedisError, OSError) as exc:
        # Cannot tell: running it again could double a non-idempotent task, so do not.
        log.warning("cannot check the owner of a redelivered task: %s", exc)
        return True


def _take_over(record: TaskResult, delivery: Delivery, rt: Runtime) -> TaskResult:
    owner = record.worker
    reason = Interrupted(f"worker {owner} died during the task")
    settled = rt.run(
        settle_abandoned(
            rt.store,
            rt.hooks,
            delivery.task_id,
            owner=owner,
            spec=delivery.spec,
            error=reason,
            retry=True,
        )
    )
    log.warning(
        "redelivered task taken over from a dead worker",
        extra={
            "task_id": delivery.task_id,
            "task": record.name,
            "dead_worker": owner,
            "status": settled.status.value if settled else None,
        },
    )
    if rt.redis is not None and owner is not None:
        try:
            presence.release_orphan(rt.redis, rt.keys, owner, delivery.task_id)
        except (RedisError, OSError) as exc:
            log.warning("could not release a dead worker's active entry: %s", exc)
    if settled is not None:
        return settled
    current = rt.run(rt.store.get(delivery.task_id))
    return current if current is not None else record


async def _mark_done(rt: Runtime, delivery: Delivery) -> None:
    """Remove the attempt's active entry; a Redis hiccup must not fail the task itself."""
    if rt.async_redis is None:
        return
    try:
        await presence.mark_done_async(
            rt.async_redis.client(), rt.keys, delivery.hostname, delivery.task_id, delivery.queue
        )
    except (RedisError, OSError) as exc:
        log.warning("active-set bookkeeping failed: %s", exc, extra={"task_id": delivery.task_id})
