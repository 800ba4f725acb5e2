"""The process-wide manager (app/core/tasks/current.py): the app installs its own; elsewhere
the builder the composition root names (app.wiring.build_task_manager) makes one on first use;
with neither, get_task_manager() says what to install instead of guessing."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.core.tasks import TaskManager, get_task_manager, set_task_manager_builder
from app.wiring import build_task_manager


def test_without_a_manager_or_builder_get_task_manager_names_what_to_install() -> None:
    set_task_manager_builder(None)
    with pytest.raises(RuntimeError, match=r"app\.wiring\.build_task_manager"):
        get_task_manager()


def test_the_builder_runs_on_first_use_only() -> None:
    built: list[TaskManager] = []

    def build() -> TaskManager:
        built.append(build_task_manager(Settings(store="memory", executor="background")))
        return built[-1]

    set_task_manager_builder(build)
    first = get_task_manager()
    assert get_task_manager() is first
    assert built == [first]
