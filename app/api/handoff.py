"""HandoffGuard: the ASGI middleware that marks an HTTP request's scope for task hand-offs.

Inside the request, `submit(..., background_tasks=bt)` defers its hand-off to the response's
background tasks; at the request's end the guard fires any still pending (the handler built
its own BackgroundTasks, or the response failed first). The rule lives in
app/core/tasks/handoff.py; this module only ties it to the ASGI request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.tasks.handoff import RequestHandoffs

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send


class HandoffGuard:
    """ASGI middleware: marks the HTTP request scope and fires hand-offs left pending at its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handoffs = RequestHandoffs()
        try:
            await self.app(scope, receive, send)
        finally:
            handoffs.close()
