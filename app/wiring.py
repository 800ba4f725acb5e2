"""The composition root: Settings -> store, executors, worker monitor, Kubernetes watch,
TaskManager.

The api (app/main.py), scripts and tests build their manager here; the worker builds its own
per-process runtime (app/workers/runtime.py). This is the only module that reaches into
app.workers, for the Celery app's configuration, so app.core never imports the layers above it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.config import Settings
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.hooks import TaskHooks, default_hooks
from app.core.tasks.manager import TaskManager
from app.core.tasks.queues import QueueRouting
from app.core.tasks.rate_limits import RateLimits, rate_limits_for
from app.core.tasks.registry import TaskRegistry, autodiscover
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.store import create_store

if TYPE_CHECKING:
    from app.core.kubernetes.watch import KubeWatcher
    from app.core.tasks.executors.base import Executor
    from app.core.tasks.store import ResultStore

log = logging.getLogger("tasklane.kubernetes")


def build_task_manager(
    settings: Settings | None = None,
    *,
    registry: TaskRegistry = default_registry,
    hooks: TaskHooks | None = None,
) -> TaskManager:
    """A new manager wired as settings say: store, executor, hooks, registered task modules.

    Raises ValueError naming the variable when the configuration cannot work.
    """
    settings = settings or Settings()
    settings.check()
    autodiscover(settings.task_modules)
    store = create_store(settings)
    # Checked after autodiscover: an override must name a registered task.
    rate_limits = rate_limits_for(store, registry, settings.rate_limits)
    hooks = hooks or default_hooks()
    executor = build_executor(
        settings, store=store, registry=registry, hooks=hooks, rate_limits=rate_limits
    )
    return TaskManager(
        store=store,
        executor=executor,
        registry=registry,
        hooks=hooks,
        max_args_bytes=settings.max_args_bytes,
        rate_limits=rate_limits,
    )


def build_executor(
    settings: Settings,
    *,
    store: ResultStore,
    registry: TaskRegistry,
    hooks: TaskHooks,
    rate_limits: RateLimits | None = None,
) -> Executor:
    """The executor TASKLANE_EXECUTOR names: background; celery alone (a task the broker
    cannot take fails with 503); or hybrid (background + celery + a WorkerMonitor, which follows
    the worker Deployment when Kubernetes awareness is on). The in-process runner enforces
    `rate_limits` (the workers enforce the same ones, on the same Redis)."""
    background = BackgroundTasksExecutor(
        store,
        registry=registry,
        hooks=hooks,
        concurrency=settings.concurrency,
        rate_limits=rate_limits,
    )
    kind = settings.resolved_executor
    if kind == "background":
        return background
    # Imported here so single mode never loads Celery's app module (nor its configuration).
    from app.core.tasks.executors.celery import CeleryExecutor
    from app.core.tasks.executors.hybrid import HybridExecutor
    from app.core.tasks.monitor import WorkerMonitor
    from app.core.tasks.recovery import recovery_layout
    from app.workers.celery_config import create_celery_app

    # The executor's own app, from the settings handed in (closed with the executor); the
    # worker's module-level app (app.workers.celery_app) is configured from the environment.
    celery_app = create_celery_app(settings)
    queues = QueueRouting.from_settings(settings)
    celery = CeleryExecutor(
        celery_app,
        store,
        publish_timeout=settings.publish_timeout,
        hooks=hooks,
        queues=queues,
        registry=registry,
        owns_app=True,
    )
    if kind == "celery":
        return celery
    broker = settings.celery_broker_url or ""
    monitor = WorkerMonitor(
        # Workers write their heartbeats where the records live (Settings.check() ensures
        # a Redis store in scaled mode); the queue lists are the broker's.
        settings.store_redis_url or broker,
        broker_url=settings.broker_redis_url,
        prefix=settings.key_prefix,
        heartbeat_interval=settings.worker_heartbeat_interval,
        interval=settings.monitor_interval,
        scale_from_zero=settings.scale_from_zero,
        queues=queues.queues(registry),
        # In a cluster: the worker Deployment and its ScaledObject (TASKLANE_KUBERNETES).
        kubernetes=watcher_from_settings(settings),
        # Dead workers' unacknowledged messages back to their queues (recovery.py).
        recovery=recovery_layout(
            broker, settings.store_redis_url, celery_app.conf.broker_transport_options or {}
        ),
    )
    return HybridExecutor(
        background,
        celery,
        monitor,
        store=store,
        queues=queues,
        routes=settings.routes,
        registry=registry,
        hooks=hooks,
        dispatch_deadline=settings.dispatch_deadline,
    )


def watcher_from_settings(settings: Settings) -> KubeWatcher | None:
    """The api's KubeWatcher when Kubernetes awareness is on, else None (also when no
    configuration loads: logged, and routing keeps to heartbeats and the flag)."""
    if not settings.kubernetes_enabled or not (
        settings.worker_selector or settings.worker_deployment
    ):
        return None
    # Imported here, as Celery's modules are below: single mode loads neither (nor urllib3).
    from app.core.kubernetes.client import KubeConfigError, load_connection
    from app.core.kubernetes.watch import KubeWatcher

    try:
        connection = load_connection()
    except KubeConfigError as exc:
        log.warning("Kubernetes awareness off: %s", exc)
        return None
    return KubeWatcher(
        connection.api_client(),
        namespace=settings.namespace or connection.namespace or settings.resolved_namespace,
        deployment=settings.worker_deployment,
        selector=settings.worker_selector,
        scaled_object=settings.resolved_scaled_object,
        scale_from_zero_flag=settings.scale_from_zero,
    )
