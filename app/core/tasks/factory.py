"""Builds the process-wide TaskManager from Settings, and hands it out (get_task_manager)."""

from __future__ import annotations

import threading

from app.config import Settings
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.hooks import HookChain, TaskHooks, TransitionLog
from app.core.tasks.manager import TaskManager
from app.core.tasks.registry import TaskRegistry, autodiscover
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.store import create_store

_lock = threading.Lock()
_manager: TaskManager | None = None


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
    hooks = hooks or HookChain([TransitionLog()])
    kind = settings.resolved_executor
    if kind != "background":
        raise ValueError(
            f"TASKLANE_EXECUTOR resolves to {kind!r}, but this build ships only the 'background' "
            "executor; unset CELERY_BROKER_URL or set TASKLANE_EXECUTOR=background"
        )
    executor = BackgroundTasksExecutor(
        store, registry=registry, hooks=hooks, concurrency=settings.concurrency
    )
    return TaskManager(store=store, executor=executor, registry=registry, hooks=hooks)


def get_task_manager() -> TaskManager:
    """The process-wide manager: the app's (set at start-up), else one built from the
    environment on first use, so scripts and tests can submit without an app."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = build_task_manager()
        return _manager


def set_task_manager(manager: TaskManager | None) -> None:
    """Install (or with None, forget) the process-wide manager."""
    global _manager
    with _lock:
        _manager = manager
