"""Throwaway tasks for tests that start real processes.

TASKLANE_TASK_MODULES=scripts.harness.sample_tasks makes a server subprocess load them.

They register in the process-wide registry on import, so a server subprocess started with that
module list can run them by name. In-process tests may use them too.
"""

from __future__ import annotations

import asyncio
import time

from app.core.tasks import TaskContext, task


@task("sample_sleep_sync", takes_context=True)
def sample_sleep_sync(ctx: TaskContext, seconds: float) -> float:
    """Sleeps in 0.05 s slices and returns early once cancelled (or interrupted)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.cancelled():
            return seconds - (deadline - time.monotonic())
        time.sleep(0.05)
    return seconds


@task("sample_sleep_async")
async def sample_sleep_async(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task("sample_maybe_fail")
def sample_maybe_fail(i: int) -> int:
    """Fails for one argument in ten (i % 10 == 0), succeeds with i * 2 otherwise."""
    if i % 10 == 0:
        raise ValueError(f"sample failure for {i}")
    return i * 2


@task("sample_block_sync")
def sample_block_sync(seconds: float) -> float:
    """Ignores cancellation entirely: one uninterruptible sleep."""
    time.sleep(seconds)
    return seconds


@task("sample_secret", sensitive=True)
def sample_secret(password: str, *, note: str = "") -> str:
    """sensitive=True: its arguments and result are never served or logged."""
    return f"token-for-{password}"


@task("sample_secret_field", sensitive=("password",))
def sample_secret_field(user: str, password: str) -> str:
    """Only `password` is hidden; the result is shown."""
    return f"{user} signed in"


@task("sample_crash")
def sample_crash(reason: str) -> None:
    """Always fails, so its record carries a traceback."""
    raise RuntimeError(reason)


@task("sample_payload_size")
async def sample_payload_size(payload: str) -> int:
    """Returns the payload's length and keeps nothing: memory tests send megabyte payloads."""
    return len(payload)
