"""The Celery app of scaled mode, built from the Settings it is handed: JSON only, late acks
with requeue when a pool child is lost, one message per worker process at a time, the two queues
(TASKLANE_LIGHT_QUEUE / TASKLANE_HEAVY_QUEUE), a route per registered task, and beat_schedule
built from app.tasks.schedule.SCHEDULE (the one schedule definition).

Importing this module builds nothing: the worker's module (app.workers.celery_app) builds its
app from the environment, the composition root (app.wiring) the api's from its settings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue

from app.config import Settings
from app.core.tasks.models import TaskSpec
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.scheduler import ScheduleEntry
from app.tasks.schedule import SCHEDULE
from app.workers import broker
from app.workers.heartbeat import Heartbeat
from app.workers.metrics_endpoint import MetricsEndpoint

#: Seconds Celery's hard time limit allows beyond a task's own timeout. execute() enforces the
#: timeout itself; the hard limit only fires when a body blocks its event loop, and kills the
#: pool child (the main process then settles the record, see app.workers.base).
TIME_LIMIT_MARGIN = 30.0
#: Lower bound for the broker's visibility timeout when TASKLANE_VISIBILITY_TIMEOUT is unset.
MIN_VISIBILITY_TIMEOUT = 3600
#: kombu's Redis transport replies to BRPOP within this many seconds (its brpop_timeout).
_BRPOP_TIMEOUT = 1.0


class TasklaneCelery(Celery):
    """A Celery app that keeps the Settings it was configured from (bootsteps read them)."""

    tasklane_settings: Settings


def visibility_timeout(settings: Settings, registry: TaskRegistry = default_registry) -> int:
    """Seconds before the broker redelivers an unacknowledged message: the setting, else twice
    the longest registered task timeout (with the hard-limit margin), at least one hour."""
    if settings.visibility_timeout is not None:
        return settings.visibility_timeout
    longest = max(
        (spec.timeout + TIME_LIMIT_MARGIN for spec in registry if spec.timeout), default=0
    )
    return max(MIN_VISIBILITY_TIMEOUT, int(2 * longest) + 1)


def time_limit(spec: TaskSpec) -> float | None:
    """Celery's hard time limit for the spec: its timeout plus TIME_LIMIT_MARGIN, or none."""
    return None if spec.timeout is None else spec.timeout + TIME_LIMIT_MARGIN


def task_routes(settings: Settings, registry: TaskRegistry = default_registry) -> dict[str, Any]:
    """{task name: {"queue": ...}} for every registered task, by the one rule the api's
    executors also follow (app.core.tasks.queues)."""
    queue_for = QueueRouting.from_settings(settings).queue_for
    return {spec.name: {"queue": queue_for(spec)} for spec in registry}


def beat_schedule(
    settings: Settings,
    entries: tuple[ScheduleEntry, ...] = SCHEDULE,
    registry: TaskRegistry = default_registry,
) -> dict[str, dict[str, Any]]:
    """Celery's beat_schedule for the schedule entries, each sent to its task's queue.

    Raises UnknownTaskError for an entry naming an unregistered task.
    """
    queue_for = QueueRouting.from_settings(settings).queue_for
    return {
        entry.name: {
            "task": entry.task,
            "schedule": entry.every,
            "args": entry.args,
            "kwargs": entry.kwargs,
            "options": {"queue": queue_for(registry.get(entry.task))},
        }
        for entry in entries
    }


def transport_options(settings: Settings, registry: TaskRegistry = default_registry) -> dict:
    visibility = visibility_timeout(settings, registry)
    return {
        "visibility_timeout": visibility,
        "socket_connect_timeout": settings.publish_timeout,
        # Sync commands (publish, ack) on a half-open connection fail within this; BRPOP
        # replies within _BRPOP_TIMEOUT, so a consumer never waits this long on a live broker.
        "socket_timeout": max(settings.publish_timeout, 2 * _BRPOP_TIMEOUT),
        # Sweep for messages of dead workers often enough for the visibility timeout chosen:
        # kombu's default (every 100 s) would dwarf a short one.
        "unacked_restore_interval": max(1, min(10, visibility // 4)),
        "unacked_restore_throttle": 1,
    }


def broker_transport(broker_url: str | None) -> str | None:
    """kombu transport for the broker URL: app.workers.broker's guarded Redis transport for
    redis:// (a busy worker survives a Redis restart), else kombu's choice from the scheme.

    rediss:// keeps kombu's own: kombu derives its TLS default from the scheme name, which an
    explicit transport would bypass."""
    if broker_url and urlsplit(broker_url).scheme == "redis":
        return broker.TRANSPORT_PATH
    return None


def _queue(name: str) -> Queue:
    # An exchange and binding of its own: a Queue without them is bound to the default
    # exchange under the default routing key, so every queue would receive every message.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def create_celery_app(
    settings: Settings, registry: TaskRegistry = default_registry, *, main: str = "tasklane"
) -> TasklaneCelery:
    """A Celery app configured from settings (app.workers.celery_app's `celery_app` is one)."""
    celery = TasklaneCelery(main, include=["app.workers.tasks"])
    celery.tasklane_settings = settings
    light, heavy = settings.light_queue, settings.heavy_queue
    celery.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_timeout=settings.publish_timeout,
        broker_connection_retry_on_startup=True,
        broker_transport=broker_transport(settings.celery_broker_url),
        broker_transport_options=transport_options(settings, registry),
        # Our ResultStore is the source of truth; Celery's backend only for old AsyncResult users.
        result_backend=settings.celery_result_backend or None,
        task_ignore_result=not settings.celery_result_backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        task_queues=tuple(_queue(name) for name in (light, heavy)),
        task_default_queue=light,
        task_routes=task_routes(settings, registry),
        beat_schedule=beat_schedule(settings, registry=registry),
        # Tasks keep running when the broker connection drops: their records are guarded, and
        # an ack lost with the connection only means a redelivery that finds them finished.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    celery.steps["worker"].add(Heartbeat)
    celery.steps["worker"].add(MetricsEndpoint)
    return celery
