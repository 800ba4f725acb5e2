"""HybridExecutor: routes each task to the in-process runner or to Celery (DESIGN.md §3).

Routing, in this order, decided inside submit from the WorkerMonitor's cache (no network I/O):
  1. a pin wins: TASKLANE_ROUTES for the name, else the spec's own `executor=`;
  2. heavy (weight="heavy" or listed in HEAVY_TASKS): Celery when the queue can be served (a live
     worker, or scale-from-zero); else in-process, counted as fallback "no_workers" ("broker_down"
     when the monitor could not read the broker at its last look), or, for a spec with
     fallback=False, ExecutorUnavailable (503 with Retry-After);
  3. light: in-process; when the runner is saturated and Celery can serve the queue (broker up),
     Celery (counted as fallback "saturated").
At dispatch:
  4. a publish that fails (BrokerUnavailable) moves the still-PENDING record to "background" and
     runs it here (fallback "broker_down"); a task that may not run here gets the 503 instead.
  5. dispatch deadline: a task sent to Celery that is still PENDING `dispatch_deadline` seconds
     after it became due, while no live worker consumes its queue, is reported (log + fallback
     "deadline"); an idempotent one that may run here is taken back and run in-process.

Moving a task in 4 and 5 is one compare-and-set on its record, so it runs exactly once
(executors/takeback.py). A pinned task is never moved: pinned to Celery it is treated like
fallback=False at dispatch. When the broker is the store's own Redis, a Celery-bound message is
written with its record (plan() asks CeleryExecutor.message()): rule 4 cannot apply (no record, no
message), rule 5 does. submit_many publishes its Celery-bound tasks in one batch (rule 4 per
task whose publish failed), then starts the in-process ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from app.core.tasks import metrics
from app.core.tasks.errors import BrokerUnavailable, ExecutorUnavailable, StoreUnavailable
from app.core.tasks.executors.base import Batch, Executor, Route
from app.core.tasks.executors.takeback import DispatchDeadline, take_back
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry

if TYPE_CHECKING:
    from fastapi import BackgroundTasks

    from app.core.tasks.executors.background import BackgroundTasksExecutor
    from app.core.tasks.executors.base import Submission
    from app.core.tasks.executors.celery import CeleryExecutor
    from app.core.tasks.metrics import FallbackReason
    from app.core.tasks.models import TaskResult, TaskSpec
    from app.core.tasks.monitor import WorkerMonitor
    from app.core.tasks.store import ResultStore

log = logging.getLogger("tasklane.hybrid")

#: What route_preview() answers for a task that submit would refuse with a 503.
UNAVAILABLE = "unavailable"


class HybridExecutor(Executor):
    name = "hybrid"
    # Both planes honour these, so they hold whichever way a task is routed.
    supports_cancel_running = True
    supports_retry = True
    supports_delay = True
    # The route carries the priority to whichever plane runs the task.
    supports_priority = True
    # A task routed in-process dies with the api process.
    durable = False

    def __init__(
        self,
        background: BackgroundTasksExecutor,
        celery: CeleryExecutor,
        monitor: WorkerMonitor,
        *,
        store: ResultStore,
        queues: QueueRouting | None = None,
        routes: Mapping[str, str] | None = None,
        registry: TaskRegistry = default_registry,
        hooks: TaskHooks | None = None,
        dispatch_deadline: float = 60.0,
        deadline_check_interval: float | None = None,
    ) -> None:
        self.background = background
        self.celery = celery
        self.monitor = monitor
        self.store = store
        #: Which tasks are heavy (HEAVY_TASKS) and which queue each goes to.
        self.queues = queues or QueueRouting()
        self.routes = dict(routes or {})
        for name, target in self.routes.items():
            if target not in ("background", "celery"):
                raise ValueError(f"TASKLANE_ROUTES pins {name!r} to unknown executor {target!r}")
        self.registry = registry
        self.hooks = hooks or TaskHooks()
        self.deadline = DispatchDeadline(
            store=store,
            monitor=monitor,
            background=background,
            celery=celery,
            registry=registry,
            hooks=self.hooks,
            deadline=dispatch_deadline,
            interval=deadline_check_interval or monitor.interval,
            may_run_locally=self.may_run_locally,
        )

    # -- routing (no I/O) ------------------------------------------------------------------------

    def _pin(self, spec: TaskSpec) -> str | None:
        """The executor the configuration (or the spec) pins this task to, if any."""
        return self.routes.get(spec.name) or spec.executor

    def route_preview(self, spec: TaskSpec) -> Route:
        """The routing rules, side-effect free (reads the monitor's cache and the runner);
        executor UNAVAILABLE where submit would answer 503."""
        queue = self.queues.queue_for(spec)
        pinned = self._pin(spec)
        if pinned is not None:
            return Route(executor=pinned, queue=queue, pinned=True)
        fallback: FallbackReason | None = None
        if self.queues.is_heavy(spec):
            if not self.monitor.can_serve(queue):
                fallback = "no_workers"
            elif not self.monitor.broker_up:
                # Unreachable at the monitor's last look: a publish would only wait out its
                # timeout before falling back (rule 4), so fall back now.
                fallback = "broker_down"
            else:
                return Route(executor="celery", queue=queue)
            executor = "background" if spec.fallback else UNAVAILABLE
            return Route(executor=executor, queue=queue, fallback=fallback)
        if self.background.saturated and self.monitor.broker_up and self.monitor.can_serve(queue):
            return Route(executor="celery", queue=queue, fallback="saturated")
        return Route(executor="background", queue=queue)

    def plan(self, call: Submission) -> Route:
        """Decide and count the decision (routing_decisions, and fallbacks when not first
        choice); a Celery-bound task gets its message for the store when it can have one.

        Raises ExecutorUnavailable for a heavy fallback=False task Celery cannot take now.
        """
        spec = call.spec
        decided = self.route_preview(spec)
        executor = decided.executor
        if executor == UNAVAILABLE:
            why = (
                "the Celery broker is unreachable"
                if decided.fallback == "broker_down"
                else f"no live Celery worker consumes queue {decided.queue!r}"
            )
            raise ExecutorUnavailable(
                f"{why}, and task {spec.name!r} may not run in-process (fallback=False)",
                retry_after=max(round(self.monitor.interval), 1),
            )
        metrics.count_routing(spec.name, executor)
        if decided.fallback is not None:
            metrics.count_fallback(spec.name, decided.fallback)
        countdown = call.options.countdown
        return Route(
            executor=executor,
            queue=decided.queue,
            countdown=countdown,
            priority=call.priority,
            message=(
                self.celery.message(call, decided.queue, countdown)
                if executor == "celery"
                else None
            ),
            fallback=decided.fallback,
            pinned=decided.pinned,
        )

    def may_run_locally(self, spec: TaskSpec) -> bool:
        """May a task routed to Celery be moved in-process (publish failure, deadline)?"""
        return spec.fallback and self._pin(spec) != "celery"

    # -- dispatch and cancel ---------------------------------------------------------------------

    async def dispatch(
        self, record: TaskResult, route: Route, *, background_tasks: BackgroundTasks | None = None
    ) -> None:
        """Hand the task to the executor its record names; a failed publish runs it here.

        Raises BrokerUnavailable when the publish fails for a task that may not run here, and
        ExecutorUnavailable when the in-process runner is shutting down.
        """
        if record.executor != "celery":
            await self.background.dispatch(record, route, background_tasks=background_tasks)
            return
        try:
            await self.celery.dispatch(record, route)
        except BrokerUnavailable as exc:
            await self._publish_failed(record, route, exc, background_tasks)
            return
        self.deadline.track(record, route.countdown)  # on its way to Celery: rule 5

    async def dispatch_many(
        self, batch: Batch, *, background_tasks: BackgroundTasks | None = None
    ) -> Sequence[ExecutorUnavailable | None]:
        """dispatch() for a batch: the Celery-bound tasks go out in one broker batch (each one
        whose publish fails gets the fallback of rule 4), then the in-process ones start."""
        outcomes: list[ExecutorUnavailable | None] = [None] * len(batch)
        remote = [index for index, (record, _) in enumerate(batch) if record.executor == "celery"]
        published = await self.celery.dispatch_many([batch[index] for index in remote])
        for index, failure in zip(remote, published, strict=True):
            record, route = batch[index]
            if failure is None:
                self.deadline.track(record, route.countdown)
                continue
            try:
                await self._publish_failed(record, route, failure, background_tasks)
            except ExecutorUnavailable as exc:
                outcomes[index] = exc
        for index, (record, route) in enumerate(batch):
            if record.executor == "celery":
                continue
            try:
                await self.background.dispatch(record, route, background_tasks=background_tasks)
            except ExecutorUnavailable as exc:
                outcomes[index] = exc
        return outcomes

    async def cancel(self, task_id: str) -> None:
        self.deadline.forget(task_id)
        try:
            record = await self.store.get(task_id)
        except StoreUnavailable:
            record = None
        if record is not None and record.executor == "celery":
            await self.celery.cancel(task_id)
        else:
            await self.background.cancel(task_id)

    async def _publish_failed(
        self,
        record: TaskResult,
        route: Route,
        exc: BrokerUnavailable,
        background_tasks: BackgroundTasks | None,
    ) -> None:
        spec = self.registry.get(record.name)
        if not self.may_run_locally(spec):
            raise exc  # the manager settles the record FAILURE; the API answers 503
        moved = await self.store.update(record.task_id, take_back)
        if moved is None:
            # The publish landed after all and a worker started it, or it was cancelled.
            log.info("task %s: publish timed out but the task moved on", record.task_id)
            return
        metrics.count_fallback(record.name, "broker_down")
        log.warning(
            "task %s %s: broker unavailable, running it in-process: %s",
            record.name,
            record.task_id,
            exc.reason,
            extra={"task_id": record.task_id, "task": record.name, "reason": "broker_down"},
        )
        await self.background.dispatch(moved, route, background_tasks=background_tasks)

    async def check_deadlines(self) -> int:
        """Run the dispatch deadline check now; returns how many tasks were taken back."""
        return await self.deadline.check()

    # -- lifecycle and diagnostics ---------------------------------------------------------------

    async def start(self) -> None:
        await self.background.start()
        await self.celery.start()
        await self.monitor.start()
        self.deadline.start()

    async def stop(self, grace: float) -> None:
        await self.deadline.stop()
        await self.monitor.stop()
        await self.background.stop(grace)
        await self.celery.stop(grace)

    async def __aenter__(self) -> HybridExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(grace=0)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        background = self.background.describe()
        info.update(
            mode="scaled",
            # /readyz reads this: the api accepts tasks while its own runner does.
            accepting=background["accepting"],
            **self.monitor.describe(),
            heavy_tasks=sorted(self.queues.heavy_tasks),
            routes=dict(self.routes),
            dispatch_deadline=self.deadline.deadline,
            awaiting_worker=len(self.deadline),
            background=background,
            celery=self.celery.describe(),
        )
        return info
