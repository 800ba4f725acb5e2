"""TasklaneTask: the Celery Task class every registry task is bound with (app.workers.tasks).

Caller side, `.delay()` / `.apply_async()` (legacy code, beat): validates the arguments against
the task's signature, writes the PENDING record before publishing (so GET /api/tasks/{id}/status
knows the id at once, as for any submit), then publishes; a publish that fails settles the record.

Worker side: the body hands the message to app.workers.delivery and turns its outcome into
Celery terms: a retry decision becomes self.retry(countdown=...) (the worker slot is freed while
the task waits), a FAILURE becomes TaskFailed (Celery's optional result backend then agrees).
A start refused by the task's global rate limit re-publishes the same message with an ETA at
its ticket and acknowledges this delivery (Ignore): no Celery retry, no tasklane attempt, and
the pool slot is free at once. Celery keeps ETA messages in the worker's memory (unacked), not
in a pool slot nor in the queue's list, so KEDA does not count them as backlog.
TasklaneRequest, in the worker's main process, settles records whose pool child is gone.

A sensitive task (@task(sensitive=...)) is published with redacted argsrepr/kwargsrepr on this
path too, and a sensitive=True task answers Celery with REDACTED instead of its result: Celery
logs "Task ... succeeded in ...: <return value>" at INFO (and a configured Celery result
backend would hold it); the real result stays in the task's record.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any, NoReturn

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Ignore, ImproperlyConfigured, Reject, Terminated
from celery.worker.request import Request

from app.core.tasks import presence
from app.core.tasks.arguments import normalise_arguments
from app.core.tasks.errors import Interrupted, StoreUnavailable, TaskTimeout
from app.core.tasks.execution import WORKER_NAME, mark_interrupted
from app.core.tasks.executors.wire import redacted_reprs
from app.core.tasks.models import TaskSpec, TaskStatus, utcnow
from app.workers.delivery import Delivery, deliver, new_record, settle_abandoned
from app.workers.runtime import get_runtime

log = logging.getLogger("tasklane.worker")

#: Seconds before a message whose record could not be read or written is tried again.
STORE_RETRY_DELAY = 5.0


class TaskFailed(Exception):
    """The task's record ended FAILURE or CANCELLED; the record holds the real error."""


class TasklaneRequest(Request):
    """Main-process handling of a message whose pool child cannot settle the record any more:
    lost child (killed, OOM; the message is requeued), hard time limit, revoke(terminate)."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._settle_lost(TaskTimeout(self.name, timeout), retry=False)
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        revoked = self._already_cancelled or self._already_revoked
        if isinstance(exc, Terminated):
            self._settle_lost(Interrupted("its pool process was terminated"), retry=False)
        elif isinstance(exc, WorkerLostError) or (
            isinstance(exc, SystemExit | KeyboardInterrupt) and not revoked
        ):
            # reject_on_worker_lost requeues the message: an idempotent task runs again.
            self._settle_lost(
                Interrupted(f"the pool process running it was lost: {exc}"),
                retry=bool(self.task.reject_on_worker_lost),
            )
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def _settle_lost(self, error: BaseException, *, retry: bool) -> None:
        # Blocks the main process's event loop for a Redis round trip: rare, and the record
        # would otherwise stay STARTED forever (its child is gone).
        spec: TaskSpec | None = getattr(self.task, "spec", None)
        if spec is None:
            return
        try:
            rt = get_runtime()
            rt.run(
                settle_abandoned(
                    rt.store,
                    rt.hooks,
                    self.id,
                    owner=self.hostname,
                    spec=spec,
                    error=error,
                    retry=retry,
                )
            )
            queue = (self.delivery_info or {}).get("routing_key") or rt.queues.queue_for(spec)
            if rt.redis is not None:
                presence.mark_done(rt.redis, rt.keys, self.hostname, self.id, queue)
        except Exception:
            log.exception("could not settle the record of a lost task", extra={"task_id": self.id})


class TasklaneTask(Task):
    """Base of every bound registry task; `spec` is set per task by app.workers.tasks."""

    Request = TasklaneRequest
    spec: TaskSpec
    #: Expected: logged by Celery on one line, without a traceback (the record has it).
    throws = (TaskFailed,)
    #: Arguments are checked against the real signature (normalise_arguments), not the body's.
    typing = False
    acks_late = True
    reject_on_worker_lost = True
    max_retries = None

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> Any:
        """Record, then publish (see the module docstring).

        Raises ImproperlyConfigured without CELERY_BROKER_URL, InvalidTaskArgs for arguments
        the task cannot take, StoreUnavailable when the record cannot be written.
        """
        if not self.app.conf.broker_url:
            raise ImproperlyConfigured(
                f"{self.name}.delay(): CELERY_BROKER_URL is not set, so there is no Celery "
                "broker; submit through app.core.tasks.get_task_manager() instead"
            )
        created = False
        # The spec's priority, as a submit would give it (a retry keeps its message's).
        priority = options.setdefault("priority", self.spec.priority)
        # self.retry() republishes under the running task's own id: its record exists.
        if task_id is None or task_id != self.request.id:
            task_id = task_id or str(uuid.uuid4())
            created = self._record(
                task_id, args or (), kwargs or {}, options.get("queue"), priority
            )
        # Every publish of this task, retries included: Celery logs these reprs on receipt.
        options.update(redacted_reprs(self.app, self.spec.redaction, args or (), kwargs or {}))
        try:
            return super().apply_async(
                args,
                kwargs,
                task_id=task_id,
                producer=producer,
                link=link,
                link_error=link_error,
                shadow=shadow,
                **options,
            )
        except Exception as exc:
            if created:
                self._unpublished(task_id, exc)
            raise

    def _record(self, task_id: str, args: Any, kwargs: Any, queue: Any, priority: int) -> bool:
        json_args, json_kwargs = normalise_arguments(self.spec, args, kwargs)
        rt = get_runtime()
        if rt.store.kind == "memory" or rt.on_loop_thread():
            # No shared store here, or called from an async task body on our own loop (which
            # cannot block on itself): the worker records it when the message arrives.
            return False
        queue_name = getattr(queue, "name", queue) or rt.queues.queue_for(self.spec)
        record = new_record(self.spec, task_id, queue_name, json_args, json_kwargs, priority)
        stored, created = rt.run(rt.store.create(record))
        if created:
            rt.hooks.after_submit(stored)
        return created

    def _unpublished(self, task_id: str, exc: Exception) -> None:
        rt = get_runtime()
        try:
            rt.run(mark_interrupted(rt.store, task_id, f"not published: {exc}", rt.hooks))
        except Exception:
            log.exception("could not settle an unpublished task", extra={"task_id": task_id})

    def deliver(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The body of every bound task: run the attempt, then answer Celery."""
        request = self.request
        rt = get_runtime()
        delivery = Delivery(
            task_id=request.id,
            spec=self.spec,
            queue=(request.delivery_info or {}).get("routing_key")
            or rt.queues.queue_for(self.spec),
            hostname=request.hostname or WORKER_NAME,
            args=list(args),
            kwargs=dict(kwargs),
            priority=(request.delivery_info or {}).get("priority"),
        )
        try:
            outcome = deliver(delivery, rt)
        except StoreUnavailable as exc:
            # The records are out of reach: acknowledging would lose the task, so the message
            # comes back later (its record, once readable, says what is left to do).
            log.warning(
                "result store unavailable, message retried in %g s: %s",
                STORE_RETRY_DELAY,
                exc,
                extra={"task_id": delivery.task_id},
            )
            self._retry_later(STORE_RETRY_DELAY)
        if outcome.retry_in is not None:
            self._retry_later(outcome.retry_in)
        if outcome.rate_wait is not None:
            self._wait_for_rate(args, kwargs, outcome.rate_wait)
        record = outcome.record
        if record is None:
            return None
        if outcome.ran and record.status in (TaskStatus.FAILURE, TaskStatus.CANCELLED):
            raise TaskFailed(f"{record.status.value}: {record.error or 'cancelled'}")
        if record.status is not TaskStatus.SUCCESS:
            return None
        redaction = self.spec.redaction
        return record.result if redaction is None else redaction.result(record.result)

    def _wait_for_rate(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float
    ) -> NoReturn:
        """Free the worker slot until the rate-limit ticket: the same message (id, arguments,
        queue, priority, headers, retries count) again with an ETA, and this one acknowledged."""
        eta = utcnow() + timedelta(seconds=seconds)
        try:
            self.signature_from_request(self.request, args, kwargs, eta=eta).apply_async()
        except Exception as exc:
            # Not re-published (the broker is away): put this one back instead of losing it.
            raise Reject(f"rate-limit re-publish failed: {exc}", requeue=True) from None
        raise Ignore()

    def _retry_later(self, countdown: float) -> NoReturn:
        """Free the worker slot: a new message runs the task after `countdown` seconds."""
        try:
            raise self.retry(countdown=countdown)
        except Reject as exc:
            # The retry message could not be published: put this one back instead (its record
            # says RETRY or is unchanged, so the redelivery carries on), rather than Celery's
            # requeue=False, which would strand the record.
            raise Reject(exc.reason, requeue=True) from None
