"""The process-wide TaskManager the guide's `get_task_manager()` hands out.

Who builds it is the composition root's business (app/wiring.py): the api's lifespan installs
its manager (set_task_manager), and a process without an app (tests, scripts) names a builder
that runs on first use (set_task_manager_builder). Keeping only the slot here lets app.core stay
below everything that knows about Celery apps and Settings-driven assembly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.tasks.manager import TaskManager

_lock = threading.Lock()
_manager: TaskManager | None = None
_builder: Callable[[], TaskManager] | None = None


def get_task_manager() -> TaskManager:
    """The process-wide manager: the app's (set at start-up), else one the registered builder
    makes on first use, so scripts and tests can submit without an app.

    Raises RuntimeError when neither was installed.
    """
    global _manager
    with _lock:
        if _manager is None:
            if _builder is None:
                raise RuntimeError(
                    "no TaskManager in this process: the app's lifespan installs one "
                    "(app.main); elsewhere call app.core.tasks.set_task_manager_builder("
                    "app.wiring.build_task_manager) or set_task_manager() first"
                )
            _manager = _builder()
        return _manager


def set_task_manager(manager: TaskManager | None) -> None:
    """Install (or with None, forget) the process-wide manager."""
    global _manager
    with _lock:
        _manager = manager


def set_task_manager_builder(builder: Callable[[], TaskManager] | None) -> None:
    """What get_task_manager() calls when no manager is installed (None: nothing; it raises)."""
    global _builder
    with _lock:
        _builder = builder
