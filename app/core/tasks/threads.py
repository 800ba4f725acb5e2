"""Runs a sync task body on its own daemon thread and awaits it from the event loop.

Why not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one sync task stuck
in a long call would hold a SIGTERM'd pod past its grace period after its record was already
marked Interrupted. The runner's concurrency semaphore bounds how many of these threads exist,
and they are separate from Starlette's thread pool, so tasks never starve request handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any


async def run_in_daemon_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call func(*args, **kwargs) on a new daemon thread; the awaiting side gets its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(outcome: BaseException | None, value: Any) -> None:
        if future.done():
            return  # the awaiting side gave up (timeout, shutdown); nothing to deliver
        if outcome is not None:
            future.set_exception(outcome)
        else:
            future.set_result(value)

    def target() -> None:
        try:
            value = context.run(func, *args, **kwargs)
        except BaseException as exc:  # delivered to the awaiting coroutine, not lost
            outcome: tuple[BaseException | None, Any] = (exc, None)
        else:
            outcome = (None, value)
        # RuntimeError: the loop closed while this task ran, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    name = getattr(func, "__name__", "task")
    threading.Thread(target=target, name=f"tasklane-sync-{name}", daemon=True).start()
    return await future
