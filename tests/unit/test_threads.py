"""DaemonThreads bounded as CeleryExecutor's publisher: a few long-lived threads (no thread per
publish), bounded by the caller's timeout, skipping work nobody waits for any more."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from app.core.tasks.threads import DaemonThreads


@pytest.mark.asyncio
async def test_calls_run_on_a_few_long_lived_daemon_threads() -> None:
    publisher = DaemonThreads("tasklane-publish", limit=2)
    try:
        threads = [await publisher.call(threading.current_thread, timeout=5) for _ in range(20)]
        # Concurrent calls share the same two threads too.
        threads += await asyncio.gather(
            *(publisher.call(threading.current_thread, timeout=5) for _ in range(20))
        )

        assert len(set(threads)) <= 2
        assert all(thread.daemon for thread in threads)
        assert threading.current_thread() not in threads
        assert publisher.running == 2
    finally:
        publisher.stop()


@pytest.mark.asyncio
async def test_results_and_exceptions_reach_the_caller() -> None:
    publisher = DaemonThreads("tasklane-publish", limit=1)
    try:
        assert await publisher.call(divmod, 7, 2, timeout=5) == (3, 1)
        with pytest.raises(ZeroDivisionError):
            await publisher.call(divmod, 1, 0, timeout=5)
    finally:
        publisher.stop()


@pytest.mark.asyncio
async def test_a_call_that_outlives_its_timeout_raises_and_queued_ones_are_skipped() -> None:
    publisher = DaemonThreads("tasklane-publish", limit=1)
    release = threading.Event()
    ran: list[str] = []
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await publisher.call(release.wait, 10, timeout=0.2)  # a black-holed broker
        with pytest.raises(TimeoutError):
            await publisher.call(ran.append, "late", timeout=0.2)  # queued behind it
        assert time.monotonic() - started < 2

        release.set()  # the stuck call returns; the abandoned one must not run now
        assert await publisher.call(ran.append, "fresh", timeout=5) is None

        assert ran == ["fresh"]
    finally:
        release.set()
        publisher.stop()


@pytest.mark.asyncio
async def test_stop_ends_the_threads_and_a_later_call_starts_new_ones() -> None:
    publisher = DaemonThreads("tasklane-publish", limit=2)
    first = await publisher.call(threading.current_thread, timeout=5)

    publisher.stop()
    first.join(timeout=5)

    assert not first.is_alive()
    assert await publisher.call(threading.current_thread, timeout=5) is not first
    publisher.stop()


def test_a_bounded_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        DaemonThreads("tasklane-publish", limit=0)


def test_a_forked_child_starts_its_own_threads() -> None:
    """A forked child (Celery prefork) inherits none of the parent's threads: every pool, the
    publisher's too, must start new ones there instead of waiting for dead ones."""
    publisher = DaemonThreads("tasklane-publish", limit=1)

    async def publish() -> str:
        thread = await publisher.call(threading.current_thread, timeout=5)
        return thread.name

    try:
        asyncio.run(publish())  # the parent's thread exists now
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            try:
                code = 0 if asyncio.run(publish()).startswith("tasklane-publish") else 1
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        publisher.stop()
