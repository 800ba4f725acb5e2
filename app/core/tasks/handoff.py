"""Hand a task to the runner after the HTTP response, without ever losing it.

FastAPI runs an endpoint's BackgroundTasks after the response is sent, so `submit(...,
background_tasks=bt)` adds one idempotent hand-off per task there. But a BackgroundTasks object
is only ever run by FastAPI inside an HTTP request: the migration guide's WebSocket example
builds one that nothing runs, and scripts do the same. So:

- outside an HTTP request (no HandoffGuard scope active) the hand-off fires at once;
- inside one, HandoffGuard fires any hand-off still pending when the request is over (the
  handler built its own BackgroundTasks, or the response failed before background tasks ran).

Each hand-off only schedules the task on the runner, so it never raises and one task's failure
never stops Starlette from running the next background task.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import BackgroundTasks
    from starlette.types import ASGIApp, Receive, Scope, Send


class _RequestScope:
    """Hand-offs deferred during one HTTP request. Tasks started inside the request inherit
    this (contextvars are copied into new asyncio tasks and threads) and may outlive it: once
    the request is over (`open` False) their hand-offs fire at once instead of waiting for a
    guard that already finished."""

    __slots__ = ("open", "pending")

    def __init__(self) -> None:
        self.open = True
        self.pending: list[Handoff] = []


_request_handoffs: ContextVar[_RequestScope | None] = ContextVar(
    "tasklane_request_handoffs", default=None
)


class Handoff:
    """Starts one task the first time it is called; later calls do nothing."""

    __slots__ = ("_start", "done")

    def __init__(self, start: Callable[[], None]) -> None:
        self._start = start
        self.done = False

    def fire(self) -> None:
        if not self.done:
            self.done = True
            self._start()

    async def run(self) -> None:
        """What the background tasks call: async, so Starlette awaits it on the loop instead
        of sending it to its thread pool. A bound coroutine function, because add_task
        recognises that in one check, where a callable object takes two (a cost per submit)."""
        self.fire()

    __call__ = run


def defer(background_tasks: BackgroundTasks, start: Callable[[], None]) -> None:
    """Run start() after the response (inside a request) or right now (anywhere else)."""
    handoff = Handoff(start)
    background_tasks.add_task(handoff.run)
    scope = _request_handoffs.get()
    if scope is None or not scope.open:
        handoff.fire()
    else:
        scope.pending.append(handoff)


class HandoffGuard:
    """ASGI middleware: marks the HTTP request scope and fires hand-offs left pending at its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _RequestScope()
        token = _request_handoffs.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            _request_handoffs.reset(token)
            request.open = False
            for handoff in request.pending:
                handoff.fire()
