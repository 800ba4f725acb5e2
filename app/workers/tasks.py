"""Every registry task bound as a Celery task under the same name (DESIGN.md §2).

The api publishes by name (send_task), and existing callers keep working unchanged:

    from app.workers.tasks import process_speak_audio
    process_speak_audio.delay(resource_id, audio_chunks, user_name)

Each body is TasklaneTask.deliver(): the shared lifecycle (app.core.tasks.execution) runs the
registered function; nothing here knows what a task does.
"""

from __future__ import annotations

from typing import Any

from app.core.tasks.models import TaskSpec
from app.core.tasks.registry import registry
from app.workers.base import TasklaneTask
from app.workers.celery_app import celery_app
from app.workers.celery_config import time_limit

#: Every bound task by name (names that are not identifiers are reachable only here).
bound: dict[str, TasklaneTask] = {}


def bind(spec: TaskSpec) -> TasklaneTask:
    """Register `spec` with celery_app as a TasklaneTask called spec.name."""

    def body(self: TasklaneTask, *args: Any, **kwargs: Any) -> Any:
        return self.deliver(args, kwargs)

    body.__name__ = body.__qualname__ = spec.name
    body.__doc__ = spec.func.__doc__
    task = celery_app.task(
        name=spec.name,
        bind=True,
        base=TasklaneTask,
        spec=spec,
        max_retries=None,
        acks_late=True,
        reject_on_worker_lost=True,
        time_limit=time_limit(spec, celery_app.tasklane_settings),
        lazy=False,  # the task object itself, not a proxy: importers get what Celery runs
    )(body)
    bound[spec.name] = task
    return task


# A task named like this module's own names (bind, registry...) is reachable through `bound`.
_own_names = set(globals())
for _spec in registry:
    _task = bind(_spec)
    if _spec.name.isidentifier() and _spec.name not in _own_names:
        globals()[_spec.name] = _task

__all__ = ["bind", "bound", *(name for name in bound if name in globals())]
