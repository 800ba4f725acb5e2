"""FastAPI dependencies shared by the routers: the app's TaskManager and URL helpers (the token
is checked before any route runs: app/api/auth.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.tasks import TaskManager

# Stands in for the id while the route's path is rendered once; task ids never contain it
# (braces are outside core/tasks/models.py's ID_PATTERN).
_ID_SLOT = "{task_id}"


async def current_manager(request: Request) -> TaskManager:
    """The app's TaskManager (installed by the lifespan).

    `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, and that
    hop (queue, wake-up, GIL hand-over) cost more than every other part of a submit.
    """
    return request.app.state.manager


Manager = Annotated[TaskManager, Depends(current_manager)]


def status_url(request: Request, task_id: str) -> str:
    """Path of the task's status endpoint, relative to the host (proxy-safe).

    The route's path is rendered by url_path_for once per app and cached on app.state; each
    call only joins strings (url_path_for walks every route, a few µs per submit).
    """
    state = request.app.state
    parts: tuple[str, str] | None = getattr(state, "status_path_parts", None)
    if parts is None:
        path = request.app.url_path_for("task_status", task_id=_ID_SLOT)
        head, _, tail = str(path).partition(_ID_SLOT)
        parts = state.status_path_parts = (head, tail)
    return f"{request.scope.get('root_path', '')}{parts[0]}{task_id}{parts[1]}"
