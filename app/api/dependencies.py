"""FastAPI dependencies shared by the routers: the app's TaskManager (behind the token for
mutating routes) and URL helpers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import require_token
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


async def authorised_manager(request: Request) -> TaskManager:
    """The app's TaskManager for a mutating route, once require_token() let the request in.

    One dependency where `dependencies=[Depends(require_token)]` plus Manager made two: FastAPI
    solves each one in a full pass of its own (~10 µs of a submit). The token is still checked
    before the body is validated, so a request without it gets 401, never 422.
    """
    await require_token(request)
    return request.app.state.manager


AuthorisedManager = Annotated[TaskManager, Depends(authorised_manager)]


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
