"""WorkerMonitor: which Celery queues can be served right now, answered from a cache.

Every `interval` seconds, off the request path, one asyncio task reads the live workers
(presence.py), every watched queue's backlog and its running count into an immutable
WorkerSnapshot; can_serve() and live_workers() read only that snapshot and the clock, so routing
a submit never waits on the network (nor broadcasts Celery's control.ping() per question).
Worker keys come from `redis_url`; queue lists from `broker_url` when the broker is another Redis.

Liveness is presence.LivenessRule, judged when asked, not when read: a worker stops counting on
time even while Redis is unreachable. Each tick also sees which heartbeat connections closed
(presence.HeartbeatConnections), so a SIGKILLed pool is noticed in about interval + 1 s + one
tick instead of the heartbeat window. With `recovery`, each tick also restores the
unacknowledged messages of workers the rule declares dead (recovery.py).

An optional KubeWatcher (app/core/kubernetes) adds what heartbeats cannot say in time: a worker
Deployment held at zero stops counting its pods' workers at once, and scale-from-zero comes from
the ScaledObject, TASKLANE_SCALE_FROM_ZERO being the fallback while the watcher has no data.
Heartbeats still decide who consumes a queue. The watcher's view is read from memory too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from app.core.kubernetes.state import pod_matcher, runs_in
from app.core.redis_client import LoopLocalRedis
from app.core.tasks import metrics
from app.core.tasks.broker_layout import BROKER_LAYOUT, BrokerLayout
from app.core.tasks.presence import (
    HeartbeatConnections,
    LivenessRule,
    WorkerInfo,
    WorkerKeys,
    active_counts,
    aread_workers,
)
from app.core.tasks.recovery import Recovery

if TYPE_CHECKING:
    from app.core.kubernetes.watch import KubeWatcher

log = logging.getLogger("tasklane.monitor")

#: What an unreachable, refusing or too slow Redis looks like to the monitor.
UNREACHABLE: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSnapshot:
    """What the last read found: workers as their heartbeats describe them, queue sizes, and
    the liveness rule they are judged by against the clock when asked. Immutable, so the
    request path reads it without locks while the monitor replaces it."""

    workers: tuple[WorkerInfo, ...] = ()
    #: Messages waiting per queue (base list plus priority sub-lists).
    queue_lengths: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    #: Tasks running on workers per queue (size of active:{queue}).
    active: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    #: Did the last read of the queue lists (the broker) succeed?
    broker_up: bool = False
    #: Did the last read of the worker keys succeed (else `workers` is the previous view)?
    workers_fresh: bool = False
    #: Unix time of the last read attempt (0: never tried).
    taken_at: float = 0.0
    rule: LivenessRule = field(default_factory=LivenessRule)

    @property
    def healthy(self) -> bool:
        """Did the last refresh read everything?"""
        return self.broker_up and self.workers_fresh

    def live(self, now: float) -> tuple[WorkerInfo, ...]:
        is_live = self.rule.is_live
        return tuple(w for w in self.workers if is_live(w.last_seen, now, w.connected))

    def live_workers(self, queue: str, now: float) -> int:
        return sum(1 for worker in self.live(now) if queue in worker.queues)

    def concurrency(self, queue: str, now: float) -> int:
        return sum(worker.concurrency for worker in self.live(now) if queue in worker.queues)

    def queues(self) -> list[str]:
        """Every queue this snapshot knows about (measured, or consumed by a worker)."""
        named = set(self.queue_lengths) | set(self.active)
        for worker in self.workers:
            named.update(worker.queues)
        return sorted(named)


class WorkerMonitor:
    """Polls worker heartbeats and queue sizes; answers routing questions from the cache."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "tasklane:",
        heartbeat_interval: float = 5.0,
        interval: float = 2.0,
        scale_from_zero: bool = False,
        queues: Iterable[str] = ("light", "heavy"),
        broker_url: str | None = None,
        kubernetes: KubeWatcher | None = None,
        recovery: BrokerLayout | None = None,
    ) -> None:
        self.redis_url = redis_url
        #: Where the queue lists live, when not in the same Redis as the worker keys.
        self.broker_url = broker_url if broker_url and broker_url != redis_url else None
        self.keys = WorkerKeys(prefix)
        self.heartbeat_interval = heartbeat_interval
        self.interval = interval
        #: TASKLANE_SCALE_FROM_ZERO: the answer while Kubernetes says nothing about KEDA.
        self.scale_from_zero = scale_from_zero
        #: The worker Deployments and ScaledObjects, when the api follows them (else None).
        self.kubernetes = kubernetes
        #: The liveness rule of workers beating every heartbeat_interval (presence.py).
        self.rule = LivenessRule.for_interval(heartbeat_interval)
        self.liveness = self.rule.liveness
        #: Tells a worker whose heartbeat connection closed (a killed pool) from one never seen.
        self._connections = HeartbeatConnections()
        # One read must not outlast the next tick, nor hang on a black-holed host.
        self.io_timeout = min(max(interval, 0.5), max(heartbeat_interval, 0.5))
        #: Queues measured on every tick; queues that workers report are added as seen.
        self.watched: set[str] = set(queues)
        #: Completed refreshes (successful or not), for tests and diagnostics.
        self.refreshes = 0
        self._snapshot = WorkerSnapshot(rule=self.rule)
        # No client-side retries: one failed read is one failed tick, the next tick retries.
        self._workers_redis = LoopLocalRedis(
            redis_url, connect_timeout=self.io_timeout, timeout=self.io_timeout, retries=0
        )
        self._queues_redis = (
            LoopLocalRedis(
                self.broker_url, connect_timeout=self.io_timeout, timeout=self.io_timeout, retries=0
            )
            if self.broker_url
            else self._workers_redis
        )
        self._task: asyncio.Task[None] | None = None
        #: Restores dead workers' unacknowledged messages each tick (None: left to kombu).
        self.recovery = Recovery(self.keys, self.rule, recovery) if recovery is not None else None

    # -- answers, from the cache only (no I/O, no await) ---------------------------------------

    @property
    def snapshot(self) -> WorkerSnapshot:
        return self._snapshot

    @property
    def broker_up(self) -> bool:
        return self._snapshot.broker_up

    def live_workers(self, queue: str) -> int:
        """Workers whose heartbeat is fresh and that consume `queue` (not counting the pods
        of a worker Deployment held at zero: they are draining)."""
        return sum(1 for worker in self._serving(time.time()) if queue in worker.queues)

    def can_serve(self, queue: str) -> bool:
        """Will a task sent to `queue` be taken? A live worker consumes it, or autoscaling
        from zero applies to it (an empty pool is then not an outage); never while every
        worker pool consuming it is held at zero, unless a worker outside them consumes it."""
        if self.held_at_zero(queue):
            return self.live_workers(queue) > 0
        return self.autoscales_from_zero(queue) or self.live_workers(queue) > 0

    def held_at_zero(self, queue: str | None = None) -> bool:
        """Does Kubernetes say every worker pool consuming `queue` is held at zero replicas
        right now? (None: is any pool held?)"""
        return self.kubernetes is not None and self.kubernetes.view.held_at_zero(
            self.scale_from_zero, queue
        )

    def autoscales_from_zero(self, queue: str | None = None) -> bool:
        """Scale-from-zero for `queue` as the ScaledObjects of the pools consuming it say (None:
        of any pool), else TASKLANE_SCALE_FROM_ZERO."""
        if self.kubernetes is not None:
            from_objects = self.kubernetes.view.scale_from_zero(queue)
            if from_objects is not None:
                return from_objects
        return self.scale_from_zero

    def _serving(self, now: float) -> tuple[WorkerInfo, ...]:
        live = self._snapshot.live(now)
        if self.kubernetes is None:
            return live
        # The pods of held pools (celery@<deployment>-<hash>-<id>) are draining.
        held = [
            pod_matcher(p.deployment_name) for p in self.kubernetes.view.held(self.scale_from_zero)
        ]
        if not held:
            return live
        return tuple(w for w in live if not any(runs_in(w.hostname, pods) for pods in held))

    def describe(self) -> dict[str, object]:
        snapshot, now = self._snapshot, time.time()
        queues = sorted(self.watched | set(snapshot.queues()))
        return {
            "broker_up": snapshot.broker_up,
            "worker_keys_readable": snapshot.workers_fresh,
            "scale_from_zero": self.autoscales_from_zero(),
            "workers": {queue: self.live_workers(queue) for queue in queues},
            "concurrency": {queue: snapshot.concurrency(queue, now) for queue in queues},
            "queue_lengths": dict(snapshot.queue_lengths),
            "active": dict(snapshot.active),
            "live_workers": sorted(worker.hostname for worker in snapshot.live(now)),
            "snapshot_age_s": round(now - snapshot.taken_at, 3) if snapshot.taken_at else None,
            "kubernetes": self.kubernetes.describe() if self.kubernetes else {"enabled": False},
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read once (so the first submits see workers), then keep polling in the background."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        if self.kubernetes is not None:
            self.kubernetes.start()  # its own threads; returns at once
        await self.refresh()
        self._task = loop.create_task(self._poll(), name="tasklane-worker-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                # Bounded: one read is bounded by io_timeout, so this only guards against a
                # cancel lost inside a client library.
                await asyncio.wait([task], timeout=self.io_timeout + 1)
        if self.kubernetes is not None:
            # Joins the watcher threads (their streams are shut down first): off the loop.
            await asyncio.to_thread(self.kubernetes.stop)
        await self._workers_redis.close()
        await self._queues_redis.close()

    async def __aenter__(self) -> WorkerMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- polling ---------------------------------------------------------------------------------

    async def refresh(self) -> WorkerSnapshot:
        """Read Redis once and replace the snapshot; never raises for an unreachable Redis.

        Worker keys unreadable: the last workers stay and expire on their own. Queue lists
        unreadable: broker_up turns False (routing then treats the broker as down).
        """
        now = time.time()
        previous = self._snapshot
        workers, active = previous.live(now), previous.active
        lengths = previous.queue_lengths
        workers_fresh = broker_up = False
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(self.io_timeout):
                workers, active = await self._read_workers(now)
            workers_fresh = True
        except UNREACHABLE as exc:
            failure = exc
        if workers_fresh or self.broker_url is not None:
            # Same Redis as the worker keys: a failed read there is the broker's answer too.
            try:
                async with asyncio.timeout(self.io_timeout):
                    lengths = await self._read_queues()
                broker_up = True
            except UNREACHABLE as exc:
                failure = failure or exc
        snapshot = WorkerSnapshot(
            workers=workers,
            queue_lengths=lengths,
            active=active,
            broker_up=broker_up,
            workers_fresh=workers_fresh,
            taken_at=now,
            rule=self.rule,
        )
        if failure is not None and (previous.healthy or not previous.taken_at):
            log.warning("worker monitor cannot read Redis: %s: %s", type(failure).__name__, failure)
        elif failure is None and not previous.healthy and previous.taken_at:
            log.info("worker monitor reads Redis again")
        self._snapshot = snapshot
        self.refreshes += 1
        self._export(snapshot, now)
        return snapshot

    async def _poll(self) -> None:
        current = asyncio.current_task()
        while True:
            await asyncio.sleep(self.interval)
            try:
                snapshot = await self.refresh()
                if snapshot.workers_fresh:
                    await self.recover()
            except Exception:  # a bug must not silently stop the polling for good
                log.exception("worker monitor refresh crashed")
            if current is not None and current.cancelling():
                # redis-py can turn a cancel that lands mid-command into a connection error,
                # which refresh() then absorbs: honour the cancel here, or stop() waits forever.
                return

    async def recover(self) -> dict[str, int]:
        """Restore the messages of workers the snapshot's rule declares dead (recovery.py);
        hostname -> messages restored. Never raises for an unreachable Redis."""
        if self.recovery is None:
            return {}
        snapshot = self._snapshot
        connected = {worker.hostname: worker.connected for worker in snapshot.workers}
        try:
            async with asyncio.timeout(self.io_timeout):
                return await self.recovery.asweep(
                    self._workers_redis.client(), time.time(), connected
                )
        except UNREACHABLE as exc:
            log.warning("recovery of dead workers' messages failed: %s", exc)
            return {}

    async def _read_workers(self, now: float) -> tuple[tuple[WorkerInfo, ...], Mapping[str, int]]:
        """Live workers (heartbeat ZSET + hashes) and active counts, from the worker keys."""
        client = self._workers_redis.client()
        live = await aread_workers(client, self.keys, self.rule.cutoff(None, now))
        workers = await self._connections.annotate(client, live)
        for worker in workers:
            self.watched.update(worker.queues)
        active = await active_counts(client, self.keys, sorted(self.watched))
        return tuple(workers), MappingProxyType(active)

    async def _read_queues(self) -> Mapping[str, int]:
        """Messages waiting per watched queue: base list plus priority sub-lists."""
        client, queues = self._queues_redis.client(), sorted(self.watched)
        backlog = await BROKER_LAYOUT.read_backlog(client, queues)
        return MappingProxyType({queue: sum(steps.values()) for queue, steps in backlog.items()})

    def _export(self, snapshot: WorkerSnapshot, now: float) -> None:
        metrics.set_broker_up(snapshot.broker_up)
        for queue in sorted(self.watched | set(snapshot.queues())):
            metrics.WORKERS_AVAILABLE.labels(queue=queue).set(self.live_workers(queue))
            if queue in snapshot.queue_lengths:
                metrics.QUEUE_LENGTH.labels(queue=queue).set(snapshot.queue_lengths[queue])
