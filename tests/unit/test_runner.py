"""BackgroundTasksExecutor running tasks through TaskManager, on the memory store and real Redis:
success, retries with backoff, timeouts, concurrency, countdown, progress, bad results."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from app.core.tasks import TaskContext, TaskManager, TaskResult, TaskStatus, task
from app.core.tasks.execution import execute, retry_delay
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.executors.base import Route
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import Progress, SubmitOptions, TaskSpec
from app.core.tasks.registry import registry
from app.core.tasks.store import ResultStore

# Shared with the task bodies below; reset before every test.
STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset_state() -> None:
    STATE.clear()
    STATE.update(
        lock=threading.Lock(),
        running=0,
        max_running=0,
        calls=0,
        release=threading.Event(),
        saw_cancel=threading.Event(),
        threads=[],
    )


@task("test_runner_echo_async")
async def echo_async(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


@task("test_runner_echo_sync")
def echo_sync(value: Any) -> Any:
    STATE["threads"].append(threading.current_thread())
    return value


@task("test_runner_fail_async", retries=2, backoff=0.01, backoff_max=0.02)
async def fail_async() -> None:
    raise ValueError("async boom")


@task("test_runner_fail_sync", retries=2, backoff=0.01, backoff_max=0.02)
def fail_sync() -> None:
    raise ValueError("sync boom")


@task("test_runner_flaky", retries=5, backoff=0.01, backoff_max=0.02, takes_context=True)
def flaky(ctx: TaskContext, succeed_on: int) -> int:
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return ctx.attempt


@task("test_runner_slow_async", timeout=0.2)
async def slow_async() -> None:
    await asyncio.sleep(30)


@task("test_runner_slow_async_retried", timeout=0.1, retries=1, backoff=0.01)
async def slow_async_retried() -> None:
    await asyncio.sleep(30)


@task("test_runner_slow_sync_retries_set", timeout=0.1, retries=1, backoff=0.01)
def slow_sync_retries_set() -> None:
    time.sleep(0.5)


@task("test_runner_slow_sync", timeout=0.2, takes_context=True)
def slow_sync(ctx: TaskContext) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ctx.cancelled():
            STATE["saw_cancel"].set()
            return "late result, must be discarded"
        time.sleep(0.01)
    return "never cancelled"


@task("test_runner_own_timeout_async", timeout=5, retries=1, backoff=0.01, takes_context=True)
async def own_timeout_async(ctx: TaskContext, fail_attempts: int) -> int:
    if ctx.attempt <= fail_attempts:
        async with asyncio.timeout(0.01):  # e.g. a client call with its own short deadline
            await asyncio.sleep(1)
    return ctx.attempt


@task("test_runner_own_timeout_sync", timeout=5, retries=1, backoff=0.01, takes_context=True)
def own_timeout_sync(ctx: TaskContext, fail_attempts: int) -> int:
    if ctx.attempt <= fail_attempts:
        raise TimeoutError("upstream did not answer")  # socket.timeout is TimeoutError
    return ctx.attempt


@task("test_runner_exit_async")
async def exit_async() -> None:
    sys.exit(3)


@task("test_runner_exit_sync")
def exit_sync() -> None:
    sys.exit(3)


def _enter() -> None:
    with STATE["lock"]:
        STATE["calls"] += 1
        STATE["running"] += 1
        STATE["max_running"] = max(STATE["max_running"], STATE["running"])


def _leave() -> None:
    with STATE["lock"]:
        STATE["running"] -= 1


@task("test_runner_count_async")
async def count_async() -> None:
    _enter()
    try:
        await asyncio.sleep(0.1)
    finally:
        _leave()


@task("test_runner_count_sync")
def count_sync() -> None:
    _enter()
    try:
        time.sleep(0.1)
    finally:
        _leave()


@task("test_runner_progress_sync", takes_context=True)
def progress_sync(ctx: TaskContext) -> str:
    ctx.progress(0.5, "half way")
    STATE["release"].wait(10)
    ctx.progress(7, "clamped")  # fractions are clamped to 0..1
    return "done"


@task("test_runner_progress_async", takes_context=True)
async def progress_async(ctx: TaskContext) -> str:
    await ctx.aprogress(0.25, "a quarter")
    await asyncio.to_thread(STATE["release"].wait, 10)
    await ctx.aprogress(-1, "clamped")
    return "done"


@task("test_runner_bad_result")
def bad_result(kind: str) -> Any:
    return {"set": {1, 2}, "object": object(), "nan": math.nan, "bytes": b"x"}[kind]


class Transitions(TaskHooks):
    """Every (task id, previous status, new status) the runner reported, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, TaskStatus | None, TaskStatus]] = []

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        self.seen.append((record.task_id, previous, record.status))

    def statuses(self, task_id: str) -> list[TaskStatus]:
        return [status for tid, _, status in self.seen if tid == task_id]


@pytest_asyncio.fixture
async def make_manager(
    store: ResultStore,
) -> AsyncIterator[Callable[..., TaskManager]]:
    built: list[TaskManager] = []

    def make(concurrency: int = 4) -> TaskManager:
        hooks = Transitions()
        executor = BackgroundTasksExecutor(store, hooks=hooks, concurrency=concurrency)
        manager = TaskManager(store=store, executor=executor, hooks=hooks)
        built.append(manager)
        return manager

    yield make
    for manager in built:
        await manager.executor.stop(grace=0)


@pytest_asyncio.fixture
async def manager(make_manager: Callable[..., TaskManager]) -> TaskManager:
    built = make_manager()
    await built.start()
    return built


def transitions(manager: TaskManager) -> Transitions:
    assert isinstance(manager.hooks, Transitions)
    return manager.hooks


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["test_runner_echo_async", "test_runner_echo_sync"])
async def test_task_succeeds_with_its_json_result(manager: TaskManager, name: str) -> None:
    value = {"numbers": [1, 2.5], "text": "é", "none": None}

    task_id = await manager.submit(name, value)
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.SUCCESS
    assert record.result == value
    assert record.error is None
    assert record.attempts == 1
    assert record.executor == "background"
    assert record.worker
    assert record.started_at is not None
    assert record.finished_at is not None
    assert record.submitted_at <= record.started_at <= record.finished_at
    assert transitions(manager).seen == [
        (task_id, TaskStatus.PENDING, TaskStatus.STARTED),
        (task_id, TaskStatus.STARTED, TaskStatus.SUCCESS),
    ]


@pytest.mark.asyncio
async def test_sync_task_runs_on_a_runner_thread_not_the_loop(manager: TaskManager) -> None:
    task_id = await manager.submit("test_runner_echo_sync", 1)
    await manager.wait(task_id, timeout=10)

    (thread,) = STATE["threads"]
    assert thread is not threading.current_thread()
    assert thread.name.startswith("tasklane-sync-")
    assert thread.daemon


@pytest.mark.asyncio
async def test_finished_task_releases_its_claim(manager: TaskManager, store: ResultStore) -> None:
    task_id = await manager.submit("test_runner_echo_async", 1)
    await manager.wait(task_id, timeout=10)
    await manager.executor.wait_all(timeout=10)

    assert task_id not in await store.claims()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["test_runner_fail_async", "test_runner_fail_sync"])
async def test_failing_task_is_retried_then_fails(manager: TaskManager, name: str) -> None:
    task_id = await manager.submit(name)
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.FAILURE
    assert record.attempts == 3  # retries=2 → 3 attempts
    assert record.error is not None
    assert record.error.type == "ValueError"
    assert "boom" in record.error.message
    assert "raise ValueError" in record.error.traceback
    assert transitions(manager).statuses(task_id) == [
        TaskStatus.STARTED,
        TaskStatus.RETRY,
        TaskStatus.STARTED,
        TaskStatus.RETRY,
        TaskStatus.STARTED,
        TaskStatus.FAILURE,
    ]


@pytest.mark.asyncio
async def test_task_that_fails_twice_succeeds_on_its_third_attempt(manager: TaskManager) -> None:
    task_id = await manager.submit("test_runner_flaky", 3)
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.SUCCESS
    assert record.result == 3
    assert record.attempts == 3
    assert record.error is None  # the earlier attempts' error is cleared on success
    assert transitions(manager).statuses(task_id).count(TaskStatus.RETRY) == 2


@pytest.mark.parametrize(
    ("attempt", "nominal"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0), (30, 3.0)],
)
def test_retry_delay_has_equal_jitter_and_is_capped(attempt: int, nominal: float) -> None:
    spec = TaskSpec(name="backoff", func=print, backoff=0.5, backoff_max=3.0)

    delays = [retry_delay(spec, attempt) for _ in range(300)]

    assert all(nominal / 2 <= delay <= nominal for delay in delays)
    assert max(delays) - min(delays) > nominal / 10  # jittered, not lockstep


@pytest.mark.asyncio
async def test_execute_schedules_each_retry_within_its_backoff_window(
    store: ResultStore,
) -> None:
    @task("test_runner_backoff_window", retries=2, backoff=2.0, backoff_max=3.0)
    def always_fails() -> None:
        raise ValueError("again")

    try:
        record = TaskResult(
            task_id="window-1",
            name="test_runner_backoff_window",
            status=TaskStatus.PENDING,
            executor="background",
            queue="light",
        )
        await store.create(record)
        hooks = TaskHooks()

        async def attempt() -> tuple[float | None, TaskResult | None]:
            outcome = await execute(
                "window-1", registry=registry, store=store, executor="background", hooks=hooks
            )
            assert outcome.ran
            return outcome.retry_in, outcome.record

        first_delay, first = await attempt()
        second_delay, second = await attempt()
        last_delay, last = await attempt()
    finally:
        registry.unregister("test_runner_backoff_window")

    assert first is not None
    assert first.status is TaskStatus.RETRY
    assert first.attempts == 1
    assert first_delay is not None
    assert 1.0 <= first_delay <= 2.0
    assert second is not None
    assert second.status is TaskStatus.RETRY
    assert second.attempts == 2
    assert second_delay is not None
    assert 1.5 <= second_delay <= 3.0
    assert last is not None
    assert last.status is TaskStatus.FAILURE
    assert last.attempts == 3
    assert last_delay is None


@pytest.mark.asyncio
async def test_async_task_over_its_timeout_fails_with_task_timeout(manager: TaskManager) -> None:
    task_id = await manager.submit("test_runner_slow_async")
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "TaskTimeout"
    assert "0.2" in record.error.message


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "attempts"),
    [
        ("test_runner_slow_async_retried", 2),  # cancelled outright, so retried like any failure
        ("test_runner_slow_sync_retries_set", 1),  # its thread still runs: no second copy
    ],
)
async def test_timed_out_task_is_retried_only_when_async(
    manager: TaskManager, name: str, attempts: int
) -> None:
    task_id = await manager.submit(name)
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.FAILURE
    assert record.attempts == attempts
    assert record.error is not None
    assert record.error.type == "TaskTimeout"


@pytest.mark.asyncio
async def test_sync_task_over_its_timeout_fails_and_sees_cancelled(manager: TaskManager) -> None:
    task_id = await manager.submit("test_runner_slow_sync")
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "TaskTimeout"
    # The thread cannot be interrupted, but its ctx.cancelled() turned true...
    assert await asyncio.to_thread(STATE["saw_cancel"].wait, 5)
    await asyncio.sleep(0.1)
    # ...and its late return value changes nothing.
    assert await manager.get_result(task_id) == record


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "names",
    [
        ["test_runner_count_async"] * 12,
        ["test_runner_count_sync"] * 12,
        ["test_runner_count_async", "test_runner_count_sync"] * 6,
    ],
    ids=["async", "sync", "mixed"],
)
async def test_runner_never_exceeds_its_concurrency(
    make_manager: Callable[..., TaskManager], names: list[str]
) -> None:
    manager = make_manager(concurrency=3)
    await manager.start()

    ids = [await manager.submit(name) for name in names]
    records = [await manager.wait(task_id, timeout=20) for task_id in ids]

    assert {record.status for record in records} == {TaskStatus.SUCCESS}
    assert STATE["calls"] == 12
    assert STATE["max_running"] == 3  # the limit is reached, never passed


@pytest.mark.asyncio
async def test_a_task_waiting_for_its_countdown_holds_no_slot(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    later = await manager.submit(
        "test_runner_echo_async", "later", options=SubmitOptions(countdown=30.0, priority=0)
    )
    now = await manager.submit("test_runner_echo_async", "now", options=SubmitOptions(priority=9))

    record = await manager.wait(now, timeout=5)

    assert record.status is TaskStatus.SUCCESS  # the one slot was free
    waiting = await manager.get_result(later)
    assert waiting is not None
    assert waiting.status is TaskStatus.PENDING


@pytest.mark.asyncio
async def test_countdown_delays_the_start(manager: TaskManager) -> None:
    task_id = await manager.submit(
        "test_runner_echo_async", "later", options=SubmitOptions(countdown=1.0)
    )
    await asyncio.sleep(0.2)
    waiting = await manager.get_result(task_id)

    record = await manager.wait(task_id, timeout=10)

    assert waiting is not None
    assert waiting.status is TaskStatus.PENDING
    assert record.status is TaskStatus.SUCCESS
    assert record.started_at is not None
    assert (record.started_at - record.submitted_at).total_seconds() >= 0.95


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "reported", "final"),
    [
        (
            "test_runner_progress_sync",
            Progress(fraction=0.5, message="half way"),
            Progress(fraction=1.0, message="clamped"),
        ),
        (
            "test_runner_progress_async",
            Progress(fraction=0.25, message="a quarter"),
            Progress(fraction=0.0, message="clamped"),
        ),
    ],
)
async def test_progress_is_visible_on_the_record(
    manager: TaskManager, name: str, reported: Progress, final: Progress
) -> None:
    task_id = await manager.submit(name)
    async with asyncio.timeout(10):
        while True:
            running = await manager.get_result(task_id)
            assert running is not None
            if running.progress is not None:
                break
            await asyncio.sleep(0.01)

    STATE["release"].set()
    record = await manager.wait(task_id, timeout=10)

    assert running.status is TaskStatus.STARTED
    assert running.progress == reported
    assert record.status is TaskStatus.SUCCESS
    assert record.progress == final


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["set", "object", "nan", "bytes"])
async def test_task_returning_a_non_json_value_fails(manager: TaskManager, kind: str) -> None:
    task_id = await manager.submit("test_runner_bad_result", kind)
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "InvalidTaskResult"
    assert record.result is None


@pytest.mark.asyncio
async def test_record_naming_an_unregistered_task_fails_when_run(
    manager: TaskManager, store: ResultStore
) -> None:
    record = TaskResult(
        task_id="orphan-1",
        name="test_runner_never_registered",
        status=TaskStatus.PENDING,
        executor="background",
        queue="light",
    )
    await store.create(record)

    await manager.executor.dispatch(record, Route(executor="background", queue="light"))
    final = await manager.wait("orphan-1", timeout=10)
    await manager.executor.wait_all(timeout=10)

    assert final.status is TaskStatus.FAILURE
    assert final.error is not None
    assert final.error.type == "UnknownTaskError"
    assert final.attempts == 0
    assert "orphan-1" not in await store.claims()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["test_runner_own_timeout_async", "test_runner_own_timeout_sync"])
async def test_task_raising_its_own_timeout_error_is_retried_not_reported_as_timed_out(
    manager: TaskManager, name: str
) -> None:
    recovers = await manager.submit(name, 1)
    keeps_failing = await manager.submit(name, 2)

    recovered = await manager.wait(recovers, timeout=10)
    failed = await manager.wait(keeps_failing, timeout=10)

    assert recovered.status is TaskStatus.SUCCESS
    assert recovered.attempts == 2
    assert failed.status is TaskStatus.FAILURE
    assert failed.attempts == 2
    assert failed.error is not None
    assert failed.error.type == "TimeoutError"  # the task's own error, not TaskTimeout


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["test_runner_exit_async", "test_runner_exit_sync"])
async def test_task_calling_sys_exit_fails_and_the_runner_keeps_going(
    manager: TaskManager, name: str
) -> None:
    exiting = await manager.submit(name)
    record = await manager.wait(exiting, timeout=10)
    after = await manager.wait(await manager.submit("test_runner_echo_async", "alive"), timeout=10)

    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "SystemExit"
    assert after.status is TaskStatus.SUCCESS


@pytest.mark.asyncio
async def test_sync_bodies_reuse_idle_daemon_threads(manager: TaskManager) -> None:
    """One after another, sync bodies run on the same parked daemon thread (no thread start
    per task), named after the body that runs."""
    from app.core.tasks import threads

    def parked() -> bool:
        return any(worker.thread is STATE["threads"][-1] for worker in threads._threads.idle)

    for value in (1, 2, 3):
        task_id = await manager.submit("test_runner_echo_sync", value)
        await manager.wait(task_id, timeout=10)
        deadline = time.monotonic() + 10
        while not parked():  # the thread parks itself just after delivering the result
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    first, *others = STATE["threads"]
    assert all(thread is first for thread in others)
    assert first.daemon
    assert first.name == "tasklane-sync-echo_sync"
