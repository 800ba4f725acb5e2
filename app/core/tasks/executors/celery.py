"""CeleryExecutor: publishes tasks to the broker for the Celery workers (DESIGN.md §3).

The message carries only the task name, the JSON arguments and the manager's task id: the
PENDING record is already in the shared store, and the worker's task wrapper runs it through the
same execute() as the in-process runner, writing STARTED/RETRY/SUCCESS/FAILURE into that record.

Publishing blocks (kombu is synchronous), so it runs on the executor's long-lived publisher
threads (core/tasks/threads.py) and is bounded by `publish_timeout`: a dead or black-holed
broker becomes BrokerUnavailable within that time instead of holding the request. A publish that
times out may still land later; that is safe, because whoever takes the task back first changes
the record's executor, and a worker refuses a record that is no longer routed to "celery" (or
one already settled FAILURE).

dispatch_many() (submit_many) publishes a whole batch through one producer, on one connection:
inside kombu's Producer.batch() where kombu has it (>= 5.7: one Redis pipeline per chunk of
PUBLISH_CHUNK messages), else one send_task after another on that producer.

When the broker is the result store's own Redis, none of that runs for most tasks: plan()
encodes the message (executors/wire.py) and the store pushes it in the script that writes the
PENDING record, so there is nothing left to publish, and nothing that can fail separately.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from app.core.tasks.errors import BrokerUnavailable, StoreUnavailable
from app.core.tasks.executors.base import Batch, Executor, Route
from app.core.tasks.executors.wire import WireFormat, redacted_reprs, wire_problem
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import DEFAULT_PRIORITY, TaskStatus
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.threads import DaemonThreads

if TYPE_CHECKING:
    from celery import Celery
    from fastapi import BackgroundTasks

    from app.core.tasks.executors.base import Submission
    from app.core.tasks.models import TaskResult
    from app.core.tasks.store import QueuePush, ResultStore

log = logging.getLogger("tasklane.celery")

#: What a broker that is down, unreachable or refusing looks like from the publishing side
#: (kombu's BatchPublishError, "delivery uncertain", is a KombuError).
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)
#: Messages per publisher job in dispatch_many: each job is bounded by publish_timeout, so a
#: batch of any size gets time in proportion, and a dead broker still fails within one timeout.
PUBLISH_CHUNK = 500

#: One message to publish: (task record, whose queue it goes to, countdown).
_Message = tuple["TaskResult", "float | None"]


class CeleryExecutor(Executor):
    name = "celery"
    # Cooperative: the worker's task sees the record's cancel_requested flag.
    supports_cancel_running = True
    supports_retry = True
    supports_delay = True
    # kombu's Redis priority lists (sub-lists Q:3, Q:6, Q:9; app.core.tasks.broker_layout).
    supports_priority = True
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
        publish_threads: int = 4,
        publish_with_record: bool = True,
    ) -> None:
        self.celery_app = celery_app
        #: Close the app's broker connections in stop() (an app built for this executor alone).
        self.owns_app = owns_app
        self.store = store
        self.publish_timeout = publish_timeout
        self.hooks = hooks or TaskHooks()
        self.queues = queues or QueueRouting()
        self.registry = registry
        self.publisher = DaemonThreads("tasklane-publish", limit=publish_threads)
        #: May messages go out in the record's own store step (message()), where possible?
        self.publish_with_record = publish_with_record
        self._wire_url: str | None = None
        self._wire: WireFormat | None = None

    def plan(self, call: Submission) -> Route:
        queue = self.queues.queue_for(call.spec)
        countdown = call.options.countdown
        return Route(
            executor=self.name,
            queue=queue,
            countdown=countdown,
            priority=call.priority,
            message=self.message(call, queue, countdown),
        )

    def message(self, call: Submission, queue: str, countdown: float | None) -> QueuePush | None:
        """The broker message the store should push with the call's record, when the store's
        Redis is this executor's broker; None: dispatch() publishes it once the record is
        written. No I/O (it runs inside submit)."""
        push_url = self.store.push_url
        if push_url != self._wire_url:  # decided once per store URL, not per message
            self._wire_url = push_url
            problem = self.publish_problem(push_url)
            self._wire = WireFormat(self.celery_app) if problem is None else None
            if problem is not None:
                log.info("tasks are published with send_task, not with their records: %s", problem)
        if self._wire is None:
            return None
        return self._wire.push(call, queue, countdown, call.priority, call.spec.redaction)

    def publish_problem(self, push_url: str | None) -> str | None:
        """Why messages cannot go out with their records in a store at push_url (None: they
        can)."""
        if not self.publish_with_record:
            return "turned off (publish_with_record=False)"
        return wire_problem(self.celery_app, push_url)

    async def dispatch(
        self, record: TaskResult, route: Route, *, background_tasks: BackgroundTasks | None = None
    ) -> None:
        """Publish the task to record.queue now, unless route.message went out with the record
        (background_tasks does not delay a publish: its failure must reach the caller as a 503
        or a local fallback).

        Raises BrokerUnavailable when the broker does not take it within publish_timeout.
        """
        if route.message is not None:
            return
        message = (record, route.countdown)
        try:
            await self.publisher.call(self._send, message, None, timeout=self.publish_timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"publishing to queue {record.queue!r} took longer than {self.publish_timeout:g} s"
            ) from None
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def dispatch_many(
        self, batch: Batch, *, background_tasks: BackgroundTasks | None = None
    ) -> list[BrokerUnavailable | None]:
        """Publish every (record, route) of the batch whose message did not go out with its
        record, PUBLISH_CHUNK messages per publisher job on one producer; per task, None when
        its message was handed over, else the BrokerUnavailable that stopped it. A chunk that
        fails counts wholly as failed (a batch flush that fails leaves delivery uncertain), and
        once one fails the rest are not tried: the broker is down.
        """
        outcomes: list[BrokerUnavailable | None] = [None] * len(batch)
        unsent = [index for index, (_, route) in enumerate(batch) if route.message is None]
        failure: BrokerUnavailable | None = None
        for start in range(0, len(unsent), PUBLISH_CHUNK):
            indexes = unsent[start : start + PUBLISH_CHUNK]
            if failure is None:
                chunk = [(batch[index][0], batch[index][1].countdown) for index in indexes]
                failure = await self._publish_chunk(chunk)
            for index in indexes:
                outcomes[index] = failure
        return outcomes

    async def _publish_chunk(self, chunk: Sequence[_Message]) -> BrokerUnavailable | None:
        try:
            await self.publisher.call(self._send_batch, chunk, timeout=self.publish_timeout)
        except TimeoutError:
            return BrokerUnavailable(
                f"publishing {len(chunk)} task(s) took longer than {self.publish_timeout:g} s"
            )
        except BROKER_ERRORS as exc:
            return BrokerUnavailable(f"{type(exc).__name__}: {exc}")
        return None

    # -- on a publisher thread ---------------------------------------------------------------

    def _send(self, message: _Message, producer: Any) -> None:
        record, countdown = message
        redaction = self.registry.get(record.name).redaction
        self.celery_app.send_task(
            record.name,
            args=record.args,
            kwargs=record.kwargs,
            queue=record.queue,
            task_id=record.task_id,
            countdown=countdown,
            priority=DEFAULT_PRIORITY if record.priority is None else record.priority,
            retry=False,
            producer=producer,
            **redacted_reprs(self.celery_app, redaction, record.args, record.kwargs),
        )

    def _send_batch(self, chunk: Sequence[_Message]) -> None:
        with self.celery_app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None)  # kombu >= 5.7
            grouped = batch(max_size=len(chunk)) if batch else contextlib.nullcontext()
            with grouped:
                for message in chunk:
                    self._send(message, producer)

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
            await self.publisher.call(
                self._revoke, task_id, terminate, timeout=self.publish_timeout
            )
        except (TimeoutError, *BROKER_ERRORS) as exc:
            log.warning("could not revoke task %s: %s: %s", task_id, type(exc).__name__, exc)
            return False
        return True

    def _revoke(self, task_id: str, terminate: bool) -> None:
        self.celery_app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")

    async def stop(self, grace: float) -> None:
        self.publisher.stop()
        if self.owns_app:
            self.celery_app.close()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        problem = self.publish_problem(getattr(self.store, "push_url", None))
        info.update(
            publish="with the record" if problem is None else f"send_task: {problem}",
            publish_timeout=self.publish_timeout,
            queues={"light": self.queues.light, "heavy": self.queues.heavy},
        )
        return info
