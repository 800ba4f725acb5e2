"""TaskManager over the in-process runner, on the memory store and real Redis: submit checks,
idempotent ids, cancel in every state, list, wait, submit_many, refusal after stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from fastapi import BackgroundTasks

from app.core.tasks import (
    ExecutorUnavailable,
    InvalidTaskArgs,
    TaskAlreadyFinished,
    TaskCall,
    TaskContext,
    TaskManager,
    TaskNotFound,
    TaskResult,
    TaskStatus,
    UnknownTaskError,
    task,
)
from app.core.tasks.errors import InvalidPriority, InvalidTaskId, UnsupportedOption
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.manager import CancelOutcome
from app.core.tasks.models import SubmitOptions
from app.core.tasks.store import ResultStore
from app.core.tasks.store.redis import RedisStore

STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset_state() -> None:
    STATE.clear()
    STATE.update(runs=[], release=threading.Event(), cancelled_at=None)


@task("test_manager_record")
async def record_run(label: str) -> str:
    STATE["runs"].append(label)
    return label


@task("test_manager_block_sync")
def block_sync() -> str:
    """Holds its slot until the test sets STATE["release"]."""
    STATE["release"].wait(10)
    return "released"


@task("test_manager_long_async")
async def long_async() -> None:
    STATE["runs"].append("long_async")
    await asyncio.sleep(30)
    STATE["runs"].append("long_async finished")


@task("test_manager_long_async_with_timeout", timeout=20)
async def long_async_with_timeout() -> None:
    STATE["runs"].append("long_async")
    await asyncio.sleep(30)


@task("test_manager_reporting_sync", takes_context=True)
def reporting_sync(ctx: TaskContext) -> str:
    """Checks for a cancel only through progress reports (how another process's cancel arrives)."""
    deadline = time.monotonic() + 10
    step = 0
    while time.monotonic() < deadline:
        step += 1
        ctx.progress(min(step / 1000, 1.0), f"step {step}")
        ctx.raise_if_cancelled()
        time.sleep(0.02)
    return "never cancelled"


@task("test_manager_cooperative_sync", takes_context=True)
def cooperative_sync(ctx: TaskContext) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.01)
    return "never cancelled"


@task("test_manager_retry_forever", retries=5, backoff=30, backoff_max=30)
async def retry_forever() -> None:
    STATE["runs"].append("retry_forever")
    raise RuntimeError("try again later")


@task("test_manager_greet")
async def greet(name: str) -> str:
    return f"hello {name}"


@task("test_manager_typed")
def typed(count: int, label: str = "x") -> str:
    return label * count


class Transitions(TaskHooks):
    def __init__(self) -> None:
        self.seen: list[tuple[str, TaskStatus | None, TaskStatus]] = []
        self.submitted: list[str] = []

    def after_submit(self, record: TaskResult) -> None:
        self.submitted.append(record.task_id)

    def on_transition(self, record: TaskResult, previous: TaskStatus | None) -> None:
        self.seen.append((record.task_id, previous, record.status))


@pytest_asyncio.fixture
async def make_manager(store: ResultStore) -> AsyncIterator[Callable[..., TaskManager]]:
    built: list[TaskManager] = []

    def make(concurrency: int = 4) -> TaskManager:
        hooks = Transitions()
        executor = BackgroundTasksExecutor(store, hooks=hooks, concurrency=concurrency)
        manager = TaskManager(store=store, executor=executor, hooks=hooks)
        built.append(manager)
        return manager

    yield make
    STATE["release"].set()
    for manager in built:
        await manager.executor.stop(grace=0)


@pytest_asyncio.fixture
async def manager(make_manager: Callable[..., TaskManager]) -> TaskManager:
    built = make_manager()
    await built.start()
    return built


async def wait_for_status(manager: TaskManager, task_id: str, status: TaskStatus) -> TaskResult:
    async with asyncio.timeout(10):
        while True:
            record = await manager.get_result(task_id)
            if record is not None and record.status is status:
                return record
            await asyncio.sleep(0.01)


# -- submit ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_submit_writes_a_pending_record_and_returns_a_uuid(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    task_id = await manager.submit(
        "test_manager_typed", 2, label="ab", options=SubmitOptions(countdown=60)
    )

    record = await manager.get_result(task_id)

    assert len(task_id) == 36
    assert task_id.count("-") == 4
    assert record is not None
    assert record.status is TaskStatus.PENDING
    assert (record.name, record.args, record.kwargs) == ("test_manager_typed", [2], {"label": "ab"})
    assert (record.executor, record.queue, record.attempts) == ("background", "light", 0)
    assert manager.hooks.submitted == [task_id]  # type: ignore[attr-defined]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "args", "kwargs", "options", "error"),
    [
        ("test_manager_not_registered", [], {}, None, UnknownTaskError),
        ("test_manager_typed", ["2"], {}, None, InvalidTaskArgs),
        ("test_manager_typed", [], {}, None, InvalidTaskArgs),
        ("test_manager_typed", [(1,)], {}, None, InvalidTaskArgs),
        ("test_manager_typed", [1], {"colour": "red"}, None, InvalidTaskArgs),
        ("test_manager_typed", [1], {}, SubmitOptions(task_id="has space"), InvalidTaskId),
        ("test_manager_typed", [1], {}, SubmitOptions(task_id=""), InvalidTaskId),
        ("test_manager_typed", [1], {}, SubmitOptions(task_id="x" * 129), InvalidTaskId),
        ("test_manager_typed", [1], {}, SubmitOptions(priority=10), InvalidPriority),
        ("test_manager_typed", [1], {}, SubmitOptions(priority=-1), InvalidPriority),
        ("test_manager_typed", [1], {}, SubmitOptions(priority=True), InvalidPriority),
        ("test_manager_typed", [1], {}, SubmitOptions(countdown=-1), UnsupportedOption),
        ("test_manager_typed", [1], {}, SubmitOptions(countdown=86_401), UnsupportedOption),
    ],
)
async def test_submit_refuses_bad_calls_before_storing_anything(
    manager: TaskManager,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    options: SubmitOptions | None,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await manager.submit(name, *args, options=options, **kwargs)

    assert await manager.list() == []


@pytest.mark.asyncio
async def test_resubmitting_an_id_returns_the_first_record_and_runs_once(
    manager: TaskManager,
) -> None:
    options = SubmitOptions(task_id="report:2024-05-01")

    first = await manager.submit("test_manager_record", "first", options=options)
    second = await manager.submit("test_manager_record", "second", options=options)
    record = await manager.wait(first, timeout=10)
    third = await manager.submit("test_manager_record", "third", options=options)
    await manager.executor.wait_all(timeout=10)

    assert first == second == third == "report:2024-05-01"
    assert record.status is TaskStatus.SUCCESS
    assert record.args == ["first"]
    assert record.result == "first"
    assert STATE["runs"] == ["first"]
    assert await manager.get_result(first) == record


@pytest.mark.asyncio
async def test_get_result_of_an_unknown_id_is_none(manager: TaskManager) -> None:
    assert await manager.get_result("no-such-task") is None


@pytest.mark.asyncio
async def test_submit_with_background_tasks_outside_a_request_starts_at_once(
    manager: TaskManager,
) -> None:
    background_tasks = BackgroundTasks()

    task_id = await manager.submit("test_manager_record", "bt", background_tasks=background_tasks)
    record = await manager.wait(task_id, timeout=10)  # nothing runs background_tasks
    await background_tasks()  # running it afterwards (as Starlette would) does not run it twice
    await manager.executor.wait_all(timeout=10)

    assert len(background_tasks.tasks) == 1
    assert record.status is TaskStatus.SUCCESS
    assert STATE["runs"] == ["bt"]


@pytest.mark.asyncio
async def test_submit_many_returns_ids_in_order_and_a_bad_call_submits_none(
    manager: TaskManager,
) -> None:
    ids = await manager.submit_many(
        [
            TaskCall("test_manager_record", ["a"]),
            TaskCall("test_manager_typed", [2], {"label": "b"}),
        ]
    )
    records = [await manager.wait(task_id, timeout=10) for task_id in ids]

    with pytest.raises(InvalidTaskArgs):
        await manager.submit_many(
            [
                TaskCall("test_manager_record", ["c"]),
                TaskCall("test_manager_typed", ["bad"]),
                TaskCall("test_manager_record", ["never"]),
            ]
        )
    await manager.executor.wait_all(timeout=10)

    assert [record.result for record in records] == ["a", "bb"]
    # Every call is checked before anything is written: "c" came before the bad call, and
    # it neither ran nor left a record.
    assert STATE["runs"] == ["a"]
    assert [r.task_id for r in await manager.list(name="test_manager_record")] == ids[:1]


@pytest.mark.asyncio
async def test_list_returns_the_newest_submissions_first(manager: TaskManager) -> None:
    ids = []
    for label in ["a", "b", "c"]:
        ids.append(await manager.submit("test_manager_record", label))
        await asyncio.sleep(0.002)  # distinct submitted_at on any clock
    for task_id in ids:
        await manager.wait(task_id, timeout=10)

    listed = await manager.list()
    limited = await manager.list(limit=2, status=TaskStatus.SUCCESS, name="test_manager_record")

    assert [record.task_id for record in listed] == ids[::-1]
    assert [record.task_id for record in limited] == ids[:0:-1]


@pytest.mark.asyncio
async def test_wait_raises_for_an_unknown_id_and_times_out_on_an_unfinished_task(
    manager: TaskManager,
) -> None:
    task_id = await manager.submit("test_manager_record", "x", options=SubmitOptions(countdown=60))

    with pytest.raises(TaskNotFound):
        await manager.wait("no-such-task", timeout=1)
    with pytest.raises(TimeoutError):
        await manager.wait(task_id, timeout=0.2)


@pytest.mark.asyncio
async def test_submit_after_stop_is_refused_and_the_record_is_not_left_pending(
    manager: TaskManager,
) -> None:
    await manager.executor.stop(grace=0)

    with pytest.raises(ExecutorUnavailable):
        await manager.submit("test_manager_record", "late", options=SubmitOptions(task_id="late"))

    record = await manager.get_result("late")
    assert record is not None
    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "Interrupted"
    assert STATE["runs"] == []


# -- cancel ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_of_a_task_waiting_on_its_countdown_means_it_never_runs(
    manager: TaskManager, store: ResultStore
) -> None:
    task_id = await manager.submit("test_manager_record", "x", options=SubmitOptions(countdown=0.5))

    assert await manager.cancel(task_id) is True
    await asyncio.sleep(0.7)  # past the countdown
    await manager.executor.wait_all(timeout=10)

    record = await manager.get_result(task_id)
    assert record is not None
    assert record.status is TaskStatus.CANCELLED
    assert record.cancel_requested is True
    assert record.finished_at is not None
    assert record.attempts == 0
    assert STATE["runs"] == []
    assert task_id not in await store.claims()
    assert (task_id, TaskStatus.PENDING, TaskStatus.CANCELLED) in manager.hooks.seen  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_cancel_of_a_task_waiting_for_a_free_slot_means_it_never_runs(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    blocker = await manager.submit("test_manager_block_sync")
    await wait_for_status(manager, blocker, TaskStatus.STARTED)
    victim = await manager.submit("test_manager_record", "victim")

    outcome, cancelled = await manager.cancel_task(victim)
    STATE["release"].set()
    await manager.wait(blocker, timeout=10)
    await manager.executor.wait_all(timeout=10)

    assert outcome is CancelOutcome.CANCELLED
    assert cancelled.status is TaskStatus.CANCELLED
    assert (await manager.get_result(victim)) == cancelled
    assert STATE["runs"] == []


@pytest.mark.asyncio
async def test_cancel_of_a_task_waiting_to_retry_stops_further_attempts(
    manager: TaskManager,
) -> None:
    task_id = await manager.submit("test_manager_retry_forever")
    await wait_for_status(manager, task_id, TaskStatus.RETRY)

    assert await manager.cancel(task_id) is True
    await manager.executor.wait_all(timeout=10)  # the 15-30 s backoff sleep was dropped

    record = await manager.get_result(task_id)
    assert record is not None
    assert record.status is TaskStatus.CANCELLED
    assert record.attempts == 1
    assert STATE["runs"] == ["retry_forever"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name", ["test_manager_long_async", "test_manager_long_async_with_timeout"]
)
async def test_cancel_of_a_running_async_task_ends_it_cancelled(
    manager: TaskManager, name: str
) -> None:
    task_id = await manager.submit(name)
    await wait_for_status(manager, task_id, TaskStatus.STARTED)

    outcome, requested = await manager.cancel_task(task_id)
    record = await manager.wait(task_id, timeout=10)

    assert outcome is CancelOutcome.REQUESTED
    assert requested.status is TaskStatus.STARTED
    assert requested.cancel_requested
    assert record.status is TaskStatus.CANCELLED
    assert record.error is None
    assert record.finished_at is not None
    assert STATE["runs"] == ["long_async"]


@pytest.mark.asyncio
async def test_cancel_of_a_running_sync_task_stops_it_cooperatively(manager: TaskManager) -> None:
    task_id = await manager.submit("test_manager_cooperative_sync")
    await wait_for_status(manager, task_id, TaskStatus.STARTED)

    assert await manager.cancel(task_id) is True
    record = await manager.wait(task_id, timeout=10)

    assert record.status is TaskStatus.CANCELLED
    assert record.result is None
    assert record.attempts == 1


@pytest.mark.asyncio
async def test_cancel_of_a_finished_task_is_refused(manager: TaskManager) -> None:
    task_id = await manager.submit("test_manager_record", "done")
    finished = await manager.wait(task_id, timeout=10)

    with pytest.raises(TaskAlreadyFinished) as caught:
        await manager.cancel_task(task_id)
    assert await manager.cancel(task_id) is False

    assert caught.value.status == "SUCCESS"
    assert await manager.get_result(task_id) == finished


@pytest.mark.asyncio
async def test_cancel_of_an_unknown_task_is_refused(manager: TaskManager) -> None:
    with pytest.raises(TaskNotFound):
        await manager.cancel_task("no-such-task")
    assert await manager.cancel("no-such-task") is False


@pytest.mark.asyncio
async def test_cancel_through_another_process_reaches_the_running_task(redis_url: str) -> None:
    # Two api replicas sharing Redis: the task runs on `here`, the cancel arrives at `there`.
    here_store = RedisStore(redis_url, prefix="replicas:")
    there_store = RedisStore(redis_url, prefix="replicas:")
    here = TaskManager(store=here_store, executor=BackgroundTasksExecutor(here_store))
    there = TaskManager(store=there_store, executor=BackgroundTasksExecutor(there_store))
    await here.start()
    await there.start()
    try:
        task_id = await here.submit("test_manager_reporting_sync")
        await wait_for_status(here, task_id, TaskStatus.STARTED)

        outcome, _ = await there.cancel_task(task_id)
        record = await here.wait(task_id, timeout=10)
    finally:
        await there.stop(grace=0)
        await here.stop(grace=0)

    assert outcome is CancelOutcome.REQUESTED
    assert record.status is TaskStatus.CANCELLED
    assert record.progress is not None


@pytest.mark.asyncio
async def test_a_task_parameter_called_name_is_passed_by_keyword(manager: TaskManager) -> None:
    task_id = await manager.submit("test_manager_greet", name="ada")
    record = await manager.wait(task_id, timeout=10)
    assert record.status is TaskStatus.SUCCESS
    assert record.result == "hello ada"
    assert record.kwargs == {"name": "ada"}


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("argument", "reason"),
    [("\ud800", "lone surrogate"), (_nested(150), "nest deeper than 100")],
    ids=["lone-surrogate", "too-deep"],
)
async def test_arguments_a_record_could_not_serve_are_refused_before_storing(
    manager: TaskManager, argument: Any, reason: str
) -> None:
    with pytest.raises(InvalidTaskArgs, match=reason):
        await manager.submit("test_manager_greet", argument)
    assert await manager.list() == []
