"""The process-wide TaskManager the guide's `get_task_manager()` hands out.

Who builds it is the composition root's business (app/wiring.py): the api's lifespan installs
its manager (set_task_manager); a process with no app (a Celery worker's task body submitting a
follow-up, a script, the migration guide's own pytest examples) gets one built from the
environment on first use. app.core must not import the composition root (DESIGN §2), so the
default builder is found the way plug-ins are: the installed package declares it as the entry
point `tasklane.wiring: task_manager` (pyproject.toml), read at the first call only.
set_task_manager_builder() replaces that default (tests, embedding).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.tasks.manager import TaskManager

_lock = threading.Lock()
_manager: TaskManager | None = None
_builder: Callable[[], TaskManager] | None = None

#: The entry point that names the composition root's builder (see module docstring).
BUILDER_ENTRY_POINT = ("tasklane.wiring", "task_manager")


def get_task_manager() -> TaskManager:
    """The process-wide manager: the app's (set at start-up), else one the builder (by default
    the composition root's, from the environment) makes on first use, so workers, scripts and
    tests can submit without an app.

    Raises RuntimeError when no builder is set and the package declares none (not installed).
    """
    global _manager
    with _lock:
        if _manager is None:
            _manager = (_builder or _default_builder())()
        return _manager


def set_task_manager(manager: TaskManager | None) -> None:
    """Install (or with None, forget) the process-wide manager."""
    global _manager
    with _lock:
        _manager = manager


def set_task_manager_builder(builder: Callable[[], TaskManager] | None) -> None:
    """What get_task_manager() calls when no manager is installed (None: the default, the
    entry point's)."""
    global _builder
    with _lock:
        _builder = builder


def _default_builder() -> Callable[[], TaskManager]:
    group, name = BUILDER_ENTRY_POINT
    for entry_point in entry_points(group=group, name=name):
        builder: Callable[[], TaskManager] = entry_point.load()
        return builder
    raise RuntimeError(
        f"no TaskManager in this process and no {group}:{name} entry point to build one: "
        "install the package (pip install -e .), or call "
        "app.core.tasks.set_task_manager_builder(app.wiring.build_task_manager) first"
    )
