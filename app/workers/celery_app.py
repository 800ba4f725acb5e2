"""The Celery application of scaled mode, as the migration guide runs it:

    celery -A app.workers.celery_app worker      # or: tasklane worker
    celery -A app.workers.celery_app beat        # or: tasklane beat
    celery -A app.workers.celery_app inspect active

`celery_app` (also `app`, which `celery -A` looks for) is configured from Settings at import:
JSON only, late acks with requeue when a pool child is lost, one message per worker process
at a time, the two queues (TASKLANE_LIGHT_QUEUE / TASKLANE_HEAVY_QUEUE), a route per registered
task, and beat_schedule built from app.tasks.schedule.SCHEDULE (the one schedule definition).

CELERY_BROKER_URL: importing this module never fails for want of it (the api imports it in
single mode, for `from app.workers.tasks import ...` in legacy code, and tests inspect the
config), but a worker or beat started without it exits at once naming the variable, and so does
a `.delay()` call (see app.workers.base) instead of trying Celery's amqp://localhost default.

Beat keeps its schedule state in a shelve file; pass a writable path (`tasklane beat` defaults
to <tmp>/tasklane-celerybeat-schedule) since the image's root file system is read-only.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, signals
from celery.exceptions import CPendingDeprecationWarning
from kombu import Exchange, Queue

from app.config import Settings
from app.core.tasks.models import TaskSpec
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry, autodiscover
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.scheduler import ScheduleEntry
from app.logs import configure_logging
from app.tasks.data import configure_domain_data
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
#: The Redis transport with the restart guard (see app.workers.broker), by kombu's name.
GUARDED_REDIS_TRANSPORT = broker.TRANSPORT_PATH
#: kombu's Redis transport replies to BRPOP within this many seconds (its brpop_timeout).
_BRPOP_TIMEOUT = 1.0


class TasklaneCelery(Celery):
    """A Celery app that keeps the Settings it was configured from (bootsteps read them)."""

    tasklane_settings: Settings


def queue_for(spec: TaskSpec, settings: Settings) -> str:
    """The Celery queue a task of this spec goes to, by the one rule the api's executors also
    follow (app.core.tasks.queues): custom queues stay, heavy tasks go to the heavy queue."""
    return QueueRouting.from_settings(settings).queue_for(spec)


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
    """{task name: {"queue": ...}} for every registered task."""
    return {spec.name: {"queue": queue_for(spec, settings)} for spec in registry}


def beat_schedule(
    settings: Settings,
    entries: tuple[ScheduleEntry, ...] = SCHEDULE,
    registry: TaskRegistry = default_registry,
) -> dict[str, dict[str, Any]]:
    """Celery's beat_schedule for the schedule entries, each sent to its task's queue.

    Raises UnknownTaskError for an entry naming an unregistered task.
    """
    return {
        entry.name: {
            "task": entry.task,
            "schedule": entry.every,
            "args": entry.args,
            "kwargs": entry.kwargs,
            "options": {"queue": queue_for(registry.get(entry.task), settings)},
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
        return GUARDED_REDIS_TRANSPORT
    return None


def _queue(name: str) -> Queue:
    # An exchange and binding of its own: a Queue without them is bound to the default
    # exchange under the default routing key, so every queue would receive every message.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def create_celery_app(
    settings: Settings, registry: TaskRegistry = default_registry, *, main: str = "tasklane"
) -> TasklaneCelery:
    """A Celery app configured from settings (the module-level `celery_app` is one of these)."""
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


settings = Settings()
autodiscover(settings.task_modules)
celery_app = create_celery_app(settings)
#: `celery -A app.workers.celery_app` looks for `app` (or `celery`) in the module.
app = celery_app


def require_broker(settings: Settings, role: str) -> None:
    """Exit with a message naming the variable when `role` (worker, beat) cannot work."""
    if not settings.celery_broker_url:
        raise SystemExit(
            f"tasklane {role}: CELERY_BROKER_URL is not set (e.g. redis://redis:6379/0); "
            "Celery workers and beat need the broker the api publishes to"
        )
    try:
        settings.check()
    except ValueError as exc:
        raise SystemExit(f"tasklane {role}: {exc}") from None


# SystemExit, not an ordinary exception: Celery logs and swallows exceptions from signal
# handlers, and a worker without its broker would otherwise retry amqp://localhost forever.
@signals.worker_process_init.connect
def _configure_domain_data(**_: object) -> None:
    """A pool child (or the solo pool's only process) starts: the domain data the example
    tasks use, as the api's lifespan configures it (connected before runtime.py's handler,
    which builds the child's runtime, as the two ran before)."""
    configure_domain_data(settings)


@signals.worker_init.connect
def _check_worker(**_: object) -> None:
    require_broker(settings, "worker")


@signals.beat_init.connect
def _check_beat(**_: object) -> None:
    require_broker(settings, "beat")


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    """Our formatter (text or JSON, TASKLANE_LOG_FORMAT) instead of Celery's, at the command
    line's --loglevel (pool children get it through CELERY_LOG_LEVEL)."""
    if not loglevel:
        level = settings.log_level
    elif isinstance(loglevel, int):
        level = logging.getLevelName(loglevel)
    else:
        level = loglevel
    configure_logging(settings.log_format, level)


@signals.celeryd_after_setup.connect
def _quiet_reconnect_warning(**_: object) -> None:
    # Celery warns on every reconnect that worker_cancel_long_running_tasks_on_connection_loss
    # will default to True in 6.0; we set it on purpose. Added after Celery's logging set-up,
    # which puts its own "always show" filter first.
    warnings.filterwarnings(
        "ignore", message=r"\s*In Celery 5\.1 we introduced", category=CPendingDeprecationWarning
    )
