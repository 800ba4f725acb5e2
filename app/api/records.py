"""What a task record looks like in an HTTP or WebSocket answer.

The stored record keeps everything (operators read tracebacks with `tasklane status` and in the
logs; workers need the real arguments); an answer carries the record with its task's hidden
values redacted (app/core/tasks/redaction.py) and without `error.traceback`, which names server
paths and code, unless TASKLANE_EXPOSE_TRACEBACKS is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.tasks.redaction import shown

if TYPE_CHECKING:
    from app.config import Settings
    from app.core.tasks import TaskResult
    from app.core.tasks.registry import TaskRegistry


def served(record: TaskResult, registry: TaskRegistry, settings: Settings) -> dict[str, Any]:
    """The JSON-ready dict an answer carries for `record`."""
    data = shown(record, registry).to_dict()
    error = data["error"]
    if error is not None and not settings.expose_tracebacks:
        del error["traceback"]
    return data
