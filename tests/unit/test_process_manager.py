"""The process-wide manager (app/core/tasks/current.py): the app installs its own; elsewhere
get_task_manager() builds one on first use with the composition root's builder, found through
the installed package's `tasklane.wiring` entry point (core never imports app.wiring), or with
a builder set in its place."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from app.config import Settings
from app.core.tasks import TaskManager, current, get_task_manager, set_task_manager_builder
from app.wiring import build_task_manager
from scripts.harness.processes import run_python


def test_the_installed_package_names_the_composition_root_as_the_default_builder() -> None:
    group, name = current.BUILDER_ENTRY_POINT
    (entry_point,) = entry_points(group=group, name=name)
    assert entry_point.load() is build_task_manager


def test_with_nothing_installed_get_task_manager_builds_from_the_environment() -> None:
    # The migration guide's test example, in a fresh interpreter with no app and no set-up.
    script = (
        "import asyncio\n"
        "from app.core.tasks import get_task_manager\n"
        "async def main():\n"
        "    task_manager = get_task_manager()\n"
        "    task_id = await task_manager.submit('calculate_rating', 'test-id')\n"
        "    record = await task_manager.wait(task_id, timeout=30)\n"
        "    print(record.status, record.executor)\n"
        "    await task_manager.stop(1)\n"
        "asyncio.run(main())\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SUCCESS", "background"]


def test_without_the_entry_point_get_task_manager_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(current, "BUILDER_ENTRY_POINT", ("tasklane.wiring", "missing"))
    with pytest.raises(RuntimeError, match=r"set_task_manager_builder"):
        get_task_manager()


def test_a_set_builder_runs_on_first_use_only() -> None:
    built: list[TaskManager] = []

    def build() -> TaskManager:
        built.append(build_task_manager(Settings(store="memory", executor="background")))
        return built[-1]

    set_task_manager_builder(build)
    first = get_task_manager()
    assert get_task_manager() is first
    assert built == [first]
