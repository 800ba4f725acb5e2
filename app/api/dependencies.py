"""FastAPI dependencies shared by the routers: the app's TaskManager and URL helpers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.tasks import TaskManager


def current_manager(request: Request) -> TaskManager:
    """The app's TaskManager (installed by the lifespan)."""
    return request.app.state.manager


Manager = Annotated[TaskManager, Depends(current_manager)]


def status_url(request: Request, task_id: str) -> str:
    """Path of the task's status endpoint, relative to the host (proxy-safe)."""
    path = request.app.url_path_for("task_status", task_id=task_id)
    return f"{request.scope.get('root_path', '')}{path}"
