"""`tasklane status`: the deployment at a glance, read straight from Redis (REDIS_URL).

Live workers (their heartbeats, DESIGN.md §3), every queue's backlog (base list plus kombu's
priority sub-lists) and running count, each registered task's route as the hybrid executor would
decide it now (HybridExecutor.route_preview, fed by a WorkerMonitor refreshed once, and by the
worker Deployment when Kubernetes awareness is on), and the latest FAILURE records. A rich table
for people, `--json` for machines. Nothing is written.

Exit status: 0 with a report; 2 when Redis is not configured or cannot be reached (the report
would be empty, and "no worker" must not be mistaken for "cannot tell").
`tasklane status --worker` is another command: the worker pod's liveness probe (cli.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from app.config import Settings
from app.core.redis_client import redact
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.presence import (
    LivenessRule,
    WorkerInfo,
    WorkerKeys,
    active_counts,
    aread_workers,
)


class StatusUnavailable(Exception):
    """Redis is not configured or does not answer: there is nothing to report."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRow:
    hostname: str
    queues: list[str]
    concurrency: int
    #: Seconds since its last heartbeat.
    heartbeat_age: float
    version: str
    pid: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRow:
    name: str
    #: Messages waiting: the base list plus its priority sub-lists.
    waiting: int | None
    #: waiting, per priority list ("0" is the base list).
    by_priority: dict[str, int] | None
    #: Tasks running on workers (active:{queue}).
    active: int
    #: Live workers consuming it.
    workers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRow:
    task: str
    weight: str
    queue: str
    #: The executor TASKLANE_ROUTES or the spec pins it to (None: routed by the rules).
    pin: str | None
    #: background | celery | unavailable (submit would answer 503).
    route: str
    #: Why it is not the first choice (no_workers, broker_down, saturated), if so.
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRow:
    task_id: str
    task: str
    error_type: str
    error_message: str
    finished_at: str | None
    executor: str | None
    worker: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    redis: str
    mode: str
    executor: str
    broker_up: bool | None
    workers: list[WorkerRow]
    #: Workers still in the heartbeat ZSET whose last beat is older than the liveness window.
    stale_workers: list[str]
    queues: list[QueueRow]
    routes: list[RouteRow]
    failures: list[FailureRow]
    kubernetes: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    generated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(settings: Settings, *, failures: int = 10) -> StatusReport:
    """Read everything once. Raises StatusUnavailable when Redis is absent or silent."""
    url = settings.store_redis_url
    if url is None:
        raise StatusUnavailable(
            "no Redis configured: set REDIS_URL (or a redis CELERY_BROKER_URL) to the Redis the "
            "api and workers share"
        )
    return asyncio.run(_collect(settings, url, failures))


async def _collect(settings: Settings, url: str, failures: int) -> StatusReport:
    client = _client(url)
    broker = settings.broker_redis_url
    queues_client = _client(broker) if broker and broker != url else client
    try:
        try:
            await client.ping()
        except (redis.RedisError, OSError) as exc:
            raise StatusUnavailable(f"cannot reach Redis at {redact(url)}: {exc}") from None
        now = time.time()
        keys = WorkerKeys(settings.key_prefix)
        rule = LivenessRule.for_interval(settings.worker_heartbeat_interval)
        infos = await aread_workers(client, keys)
        workers = [_worker_row(info, now) for info in infos if rule.is_live(info.last_seen, now)]
        stale = [info.hostname for info in infos if not rule.is_live(info.last_seen, now)]
        decided = await _decide(settings, url, failures)
        names = sorted(decided.queues | {queue for worker in workers for queue in worker.queues})
        queues = await _read_queues(client, queues_client, keys, names, workers)
    finally:
        await client.aclose()
        if queues_client is not client:
            await queues_client.aclose()
    return StatusReport(
        redis=redact(url),
        mode="single" if settings.resolved_executor == "background" else "scaled",
        executor=settings.resolved_executor,
        broker_up=decided.broker_up,
        workers=workers,
        stale_workers=stale,
        queues=queues,
        routes=decided.routes,
        failures=decided.failures,
        kubernetes=decided.kubernetes,
        generated_at=now,
    )


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=3, socket_timeout=5
    )


def _worker_row(info: WorkerInfo, now: float) -> WorkerRow:
    return WorkerRow(
        hostname=info.hostname,
        queues=list(info.queues),
        concurrency=info.concurrency,
        heartbeat_age=round(max(now - info.last_seen, 0.0), 1),
        version=info.version,
        pid=info.pid,
    )


async def _read_queues(
    client: aioredis.Redis,
    queues_client: aioredis.Redis,
    keys: WorkerKeys,
    names: Sequence[str],
    workers: Sequence[WorkerRow],
) -> list[QueueRow]:
    try:
        waiting: dict[str, dict[int, int]] | None = await BROKER_LAYOUT.read_backlog(
            queues_client, names
        )
    except (redis.RedisError, OSError):  # the broker is another Redis, and it is down
        waiting = None
    active = await active_counts(client, keys, names)
    rows = []
    for name in names:
        by_priority = None if waiting is None else {str(k): n for k, n in waiting[name].items()}
        rows.append(
            QueueRow(
                name=name,
                waiting=sum(by_priority.values()) if by_priority is not None else None,
                by_priority=by_priority,
                active=active[name],
                workers=sum(1 for worker in workers if name in worker.queues),
            )
        )
    return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class _Decisions:
    """What the async half reads: routes (through the executor's own rules) and failures."""

    routes: list[RouteRow]
    failures: list[FailureRow]
    kubernetes: dict[str, Any]
    #: The queues registered tasks are published to.
    queues: set[str]
    broker_up: bool | None


async def _decide(settings: Settings, url: str, limit: int) -> _Decisions:
    """Each task's route as the executor decides it now (the monitor refreshed once, the
    Kubernetes view listed once), and the latest FAILURE records from the store."""
    from app.core.tasks.hooks import TaskHooks
    from app.core.tasks.models import TaskStatus
    from app.core.tasks.queues import QueueRouting
    from app.core.tasks.registry import autodiscover, registry
    from app.core.tasks.store.redis import RedisStore

    autodiscover(settings.task_modules)
    store = RedisStore(url, prefix=settings.key_prefix, recent_max=settings.recent_max)
    routing = QueueRouting.from_settings(settings)
    specs = list(registry)
    kind = settings.resolved_executor
    kubernetes: dict[str, Any] = {"enabled": False}
    broker_up: bool | None = None
    try:
        failures = [
            _failure_row(record)
            for record in await store.list(status=TaskStatus.FAILURE, limit=limit)
        ]
        if kind != "hybrid":
            routes = [_route_row(spec, routing, None, kind, None) for spec in specs]
        else:
            from app.core.tasks.executors.hybrid import HybridExecutor
            from app.wiring import build_executor

            hybrid = build_executor(settings, store=store, registry=registry, hooks=TaskHooks())
            assert isinstance(hybrid, HybridExecutor)  # settings.resolved_executor == "hybrid"
            monitor = hybrid.monitor
            try:
                await monitor.refresh()
                if monitor.kubernetes is not None:
                    await asyncio.to_thread(monitor.kubernetes.sync_once)
                routes = []
                for spec in specs:
                    route = hybrid.route_preview(spec)
                    pin = route.executor if route.pinned else None
                    routes.append(_route_row(spec, routing, pin, route.executor, route.fallback))
                kubernetes, broker_up = monitor.describe()["kubernetes"], monitor.broker_up
            finally:
                await monitor.stop()
                await hybrid.celery.stop(0)
    finally:
        await store.close()
    return _Decisions(
        routes=routes,
        failures=failures,
        kubernetes=kubernetes,
        queues=routing.queues(specs),
        broker_up=broker_up,
    )


def _failure_row(record: Any) -> FailureRow:
    error = record.error
    return FailureRow(
        task_id=record.task_id,
        task=record.name,
        error_type=error.type if error else "?",
        error_message=error.message if error else "",
        finished_at=record.finished_at.isoformat() if record.finished_at else None,
        executor=record.executor,
        worker=record.worker,
    )


def _route_row(
    spec: Any, routing: Any, pin: str | None, route: str, reason: str | None
) -> RouteRow:
    return RouteRow(
        task=spec.name,
        weight="heavy" if routing.is_heavy(spec) else "light",
        queue=routing.queue_for(spec),
        pin=pin,
        route=route,
        reason=reason,
    )
