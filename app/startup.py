"""Start-up failures an operator fixes outside the code, reported as one line.

Starlette answers any exception in the lifespan with a "lifespan.startup.failed" message that
carries the whole traceback, and uvicorn logs that message: an unreachable REDIS_URL or a
misspelt TASKLANE_TASK_MODULES came out as forty lines of frames around one useful sentence.
The lifespan raises StartupFailed for those causes, naming the variable to fix, and
OneLineStartupFailure sends uvicorn just that sentence; every other exception keeps its
traceback (a bug in code needs one). uvicorn then logs "Application startup failed. Exiting."
and exits 3 (`tasklane serve --workers N` too: app/cli.py reads its workers' exit codes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StartupFailed(Exception):
    """The app cannot start for a reason outside the code: a setting, a service not answering."""


class OneLineStartupFailure:
    """Pure ASGI middleware for the lifespan: a StartupFailed becomes a one-line failure."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        # Starlette sends its failure message (with the traceback) before it re-raises: hold
        # it back until the exception says which message uvicorn should get.
        held: list[Message] = []

        async def hold_startup_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_startup_failure)
        except StartupFailed as exc:
            await send({"type": "lifespan.startup.failed", "message": f"tasklane: {exc}"})
            # Raised on: uvicorn, told already, logs nothing more; a TestClient (or another
            # server) that only learns of a failure from the exception still does.
            raise
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)
