"""The example domain tasks run through the real TaskManager (memory store, in-process runner)
against both DomainData backends: memory and a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import app.tasks  # noqa: F401 - registers every domain task
from app.config import Settings
from app.core.tasks import InvalidTaskArgs, SubmitOptions, TaskResult, TaskStatus, registry
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.manager import TaskManager
from app.core.tasks.store.memory import MemoryStore
from app.tasks.audio import process_speak_audio
from app.tasks.data import DomainData, configure_domain_data
from app.tasks.notify import send_notification
from app.tasks.schedule import SCHEDULE


@pytest_asyncio.fixture(params=["memory", "redis"])
async def data(request: pytest.FixtureRequest) -> AsyncIterator[DomainData]:
    """The process-wide DomainData the tasks use, on each backend in turn."""
    if request.param == "memory":
        settings = Settings(store="memory")
    else:
        settings = Settings(store="redis", redis_url=request.getfixturevalue("redis_url"))
    backend = configure_domain_data(settings)
    assert backend is not None
    yield backend
    await backend.close()
    configure_domain_data(None)


@pytest_asyncio.fixture
async def manager() -> AsyncIterator[TaskManager]:
    store = MemoryStore(result_ttl=3600, max_records=1000)
    manager = TaskManager(store=store, executor=BackgroundTasksExecutor(store))
    await manager.start()
    yield manager
    await manager.stop(grace=1.0)


async def run(manager: TaskManager, name: str, *args: object, **kwargs: object) -> TaskResult:
    task_id = await manager.submit(name, *args, **kwargs)
    return await manager.wait(task_id, timeout=10)


def pcm16_sine(seconds: float, amplitude: int = 32767, rate: int = 16_000) -> list[str]:
    count = int(seconds * rate)
    samples = [round(amplitude * math.sin(2 * math.pi * 440 * i / rate)) for i in range(count)]
    raw = struct.pack(f"<{count}h", *samples)
    return [base64.b64encode(raw[i : i + 6400]).decode() for i in range(0, len(raw), 6400)]


class StubContext:
    """Stands in for TaskContext when a test calls a task body directly (a simulated crash)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    async def aprogress(self, fraction: float, message: str = "") -> None:
        """Progress is not recorded for direct calls."""


def test_every_domain_and_scheduled_task_is_registered() -> None:
    names = {
        "process_speak_audio",
        "calculate_rating",
        "calculate_all_ratings",
        "sync_impressions_from_redis",
        "cleanup_sessions",
        "send_notification",
    }
    assert names <= set(registry.names())
    assert {entry.task for entry in SCHEDULE} <= names
    heavy = {spec.name for spec in registry if spec.name in names and spec.weight == "heavy"}
    assert heavy == {"process_speak_audio", "calculate_all_ratings", "sync_impressions_from_redis"}
    assert all(registry.get(name).idempotent for name in names)


# -- process_speak_audio ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_audio_is_analysed_and_stored_on_the_resource(
    manager: TaskManager, data: DomainData
) -> None:
    record = await run(manager, "process_speak_audio", "r1", pcm16_sine(0.5), "ann")
    assert record.status is TaskStatus.SUCCESS, record.error
    assert record.progress is not None
    assert record.progress.fraction == 1.0
    analysis = record.result["analysis"]
    assert analysis["duration_s"] == 0.5
    assert analysis["rms_dbfs"] == pytest.approx(-3.01, abs=0.02)
    assert analysis["voiced_ratio"] == 1.0
    resource = await data.get_resource("r1")
    assert resource is not None
    assert resource["status"] == "processed"
    assert resource["processed_by"] == "ann"
    assert resource["analysis"] == analysis


@pytest.mark.asyncio
async def test_a_rerun_after_a_failure_clears_the_failure(
    manager: TaskManager, data: DomainData
) -> None:
    await run(manager, "process_speak_audio", "r1", ["%%%"])
    record = await run(manager, "process_speak_audio", "r1", pcm16_sine(0.1), sample_rate=16000)
    assert record.status is TaskStatus.SUCCESS
    resource = await data.get_resource("r1")
    assert resource is not None
    assert (resource["status"], resource["failure_reason"]) == ("processed", None)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        (["this is not base64!"], "base64"),
        ([base64.b64encode(b"\x01\x02\x03").decode()], "even number"),
        ([], "empty"),
    ],
)
async def test_bad_audio_fails_the_task_and_the_resource(
    manager: TaskManager, data: DomainData, chunks: list[str], reason: str
) -> None:
    record = await run(manager, "process_speak_audio", "r1", chunks)
    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "AudioError"
    resource = await data.get_resource("r1")
    assert resource is not None
    assert resource["status"] == "failed"
    assert reason in resource["failure_reason"]


class CancelledAtProgress(StubContext):
    """A context whose first progress report is where the runner's cancel lands."""

    async def aprogress(self, fraction: float, message: str = "") -> None:
        raise asyncio.CancelledError


@pytest.mark.asyncio
async def test_a_cancelled_run_does_not_leave_the_resource_processing(data: DomainData) -> None:
    ctx = CancelledAtProgress("audio-1")
    with pytest.raises(asyncio.CancelledError):
        await process_speak_audio(ctx, "r1", pcm16_sine(0.1))  # type: ignore[arg-type]
    resource = await data.get_resource("r1")
    assert resource is not None
    assert resource["status"] == "failed"
    assert "stopped" in resource["failure_reason"]


@pytest.mark.asyncio
async def test_audio_arguments_are_type_checked_at_submit(manager: TaskManager) -> None:
    with pytest.raises(InvalidTaskArgs):
        await manager.submit("process_speak_audio", "r1", "not a list")
    with pytest.raises(InvalidTaskArgs):
        await manager.submit("process_speak_audio", "r1", [], sample_rate="16000")


# -- ratings ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rating_is_a_bayesian_average_of_the_votes(
    manager: TaskManager, data: DomainData
) -> None:
    await data.add_vote("r1", "ann", 5)
    await data.add_vote("r1", "bob", 4)
    record = await run(manager, "calculate_rating", "r1")
    assert record.status is TaskStatus.SUCCESS
    expected = round((5 * 3.0 + 9) / 7, 4)
    assert record.result == {"resource_id": "r1", "rating": expected, "votes": 2}
    resource = await data.get_resource("r1")
    assert resource is not None
    assert (resource["rating"], resource["votes"]) == (expected, 2)
    assert "rated_at" in resource


@pytest.mark.asyncio
async def test_rating_an_unknown_resource_creates_it(
    manager: TaskManager, data: DomainData
) -> None:
    record = await run(manager, "calculate_rating", "fresh")
    assert record.result == {"resource_id": "fresh", "rating": 3.0, "votes": 0}
    resource = await data.get_resource("fresh")
    assert resource is not None
    assert resource["status"] == "new"


@pytest.mark.asyncio
async def test_all_ratings_are_recalculated(manager: TaskManager, data: DomainData) -> None:
    await data.save_resource({"id": "a", "status": "processed"})
    await data.add_vote("b", "ann", 1)
    await data.add_vote("c", "ann", 5)
    record = await run(manager, "calculate_all_ratings")
    assert record.status is TaskStatus.SUCCESS
    assert record.result == {"resources": 3}
    ratings = {}
    for resource_id in ("a", "b", "c"):
        resource = await data.get_resource(resource_id)
        assert resource is not None
        ratings[resource_id] = resource["rating"]
    assert ratings == {"a": 3.0, "b": round(16 / 6, 4), "c": round(20 / 6, 4)}
    a = await data.get_resource("a")
    assert a is not None
    assert a["status"] == "processed"  # only the rating fields were written


# -- impressions -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sync_folds_pending_impressions_into_resources(
    manager: TaskManager, data: DomainData
) -> None:
    await data.record_impressions("a", 3)
    await data.record_impressions("b", 2)
    await data.record_impressions("a")
    record = await run(manager, "sync_impressions_from_redis")
    assert record.status is TaskStatus.SUCCESS
    assert record.result == {"resources": 2, "impressions": 6, "recovered_batches": 0}
    assert await data.pending_impressions() == {}
    resource = await data.get_resource("a")
    assert resource is not None
    assert resource["impressions"] == 4
    again = await run(manager, "sync_impressions_from_redis")
    assert again.result == {"resources": 0, "impressions": 0, "recovered_batches": 0}


@pytest.mark.asyncio
async def test_a_rerun_with_the_same_task_id_does_not_double_count(
    manager: TaskManager, data: DomainData
) -> None:
    await data.record_impressions("a", 3)
    # The first run claimed its batch and died; the broker redelivers the same task id.
    await data.claim_impressions("sync-1")
    await data.record_impressions("a", 10)
    task_id = await manager.submit(
        "sync_impressions_from_redis", options=SubmitOptions(task_id="sync-1")
    )
    record = await manager.wait(task_id, timeout=10)
    assert record.result["impressions"] == 3
    resource = await data.get_resource("a")
    assert resource is not None
    assert resource["impressions"] == 3
    assert await data.pending_impressions() == {"a": 10}


@pytest.mark.asyncio
async def test_sync_finishes_a_batch_orphaned_by_a_dead_run(
    manager: TaskManager, data: DomainData
) -> None:
    await data.record_impressions("a", 3)
    await data.claim_impressions("dead-run")  # its runner shut down; nobody re-runs it
    await data.record_impressions("a", 2)
    record = await run(manager, "sync_impressions_from_redis")
    assert record.result == {"resources": 1, "impressions": 5, "recovered_batches": 1}
    assert await data.open_impression_batches() == []
    resource = await data.get_resource("a")
    assert resource is not None
    assert resource["impressions"] == 5


# -- sessions --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cleanup_removes_only_expired_sessions(
    manager: TaskManager, data: DomainData
) -> None:
    await data.touch_session("old", ttl=0.05, data={})
    await data.touch_session("live", ttl=60, data={})
    await asyncio.sleep(0.1)
    record = await run(manager, "cleanup_sessions")
    assert record.result == {"removed": 1}
    assert set(await data.sessions()) == {"live"}


# -- notifications ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_notification_lands_in_the_outbox(manager: TaskManager, data: DomainData) -> None:
    record = await run(manager, "send_notification", "ann", "hello", channel="email")
    assert record.status is TaskStatus.SUCCESS
    assert record.result == {
        "id": record.task_id,
        "recipient": "ann",
        "channel": "email",
        "duplicate": False,
    }
    [entry] = await data.notifications("ann")
    assert entry["id"] == record.task_id
    assert (entry["message"], entry["channel"]) == ("hello", "email")
    assert "sent_at" in entry


@pytest.mark.asyncio
async def test_a_retried_notification_is_sent_once(manager: TaskManager, data: DomainData) -> None:
    await send_notification(StubContext("note-1"), "ann", "hello")  # type: ignore[arg-type]
    task_id = await manager.submit(
        "send_notification", "ann", "hello", options=SubmitOptions(task_id="note-1")
    )
    record = await manager.wait(task_id, timeout=10)
    assert record.result["duplicate"] is True
    assert len(await data.notifications("ann")) == 1


@pytest.mark.asyncio
async def test_an_unknown_channel_fails_the_task(manager: TaskManager, data: DomainData) -> None:
    record = await run(manager, "send_notification", "ann", "hello", channel="pigeon")
    assert record.status is TaskStatus.FAILURE
    assert record.error is not None
    assert record.error.type == "ValueError"
    assert "channel" in record.error.message
    assert await data.notifications("ann") == []
