"""Hand a task to the runner after the HTTP response, without ever losing it.

FastAPI runs an endpoint's BackgroundTasks after the response is sent, so `submit(...,
background_tasks=bt)` adds one idempotent hand-off per task there. But a BackgroundTasks object
is only ever run by FastAPI inside an HTTP request: the migration guide's WebSocket example
builds one that nothing runs, and scripts do the same. So:

- outside an HTTP request (no RequestHandoffs open) the hand-off fires at once;
- inside one, the api's HandoffGuard middleware (app/api/handoff.py) holds a RequestHandoffs
  for the request and closes it at the end, firing any hand-off still pending (the handler
  built its own BackgroundTasks, or the response failed before background tasks ran).

Each hand-off only schedules the task on the runner, so it never raises and one task's failure
never stops Starlette from running the next background task.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import BackgroundTasks


class RequestHandoffs:
    """Hand-offs deferred during one HTTP request, open from construction until close().

    Tasks started inside the request inherit this (contextvars are copied into new asyncio
    tasks and threads) and may outlive it: once the request is over (`open` False) their
    hand-offs fire at once instead of waiting for a guard that already finished.
    """

    __slots__ = ("_token", "open", "pending")

    def __init__(self) -> None:
        self.open = True
        self.pending: list[Handoff] = []
        self._token = _request_handoffs.set(self)

    def close(self) -> None:
        """The request is over: stop deferring and fire every hand-off still pending."""
        _request_handoffs.reset(self._token)
        self.open = False
        for handoff in self.pending:
            handoff.fire()


_request_handoffs: ContextVar[RequestHandoffs | None] = ContextVar(
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
