"""update(riders=...): Redis commands carried in the compare-and-set's own step (a worker's
active-set entry, app/core/tasks/presence.py). `before` runs ahead of the record's write, `after`
with the write that settles it, never with one that lost a race, and alone when nothing is
written. The riders here log their order to a list (LPUSH) or snapshot the record (COPY).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis

from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.store import KeyOp, Riders
from app.core.tasks.store.memory import MemoryStore
from app.core.tasks.store.redis import RedisStore, encode
from tests.unit.test_store_contract import make_record

LOG = "riders:log"
RIDERS = Riders(
    before=(KeyOp("LPUSH", LOG, ("before",)),), after=(KeyOp("LPUSH", LOG, ("after",)),)
)


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    backend = RedisStore(redis_url, prefix="riders:")
    yield backend
    await backend.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _start(record: TaskResult) -> TaskResult:
    return record.replace(status=TaskStatus.STARTED, attempts=record.attempts + 1)


def _log(raw: redis.Redis) -> list[str]:
    return list(reversed(raw.lrange(LOG, 0, -1)))


@pytest.mark.asyncio
async def test_riders_run_before_and_after_the_write_in_its_step(
    store: RedisStore, raw: redis.Redis
) -> None:
    record = make_record("t-1")
    await store.create(record)
    key = store.key("t-1")
    snapshots = Riders(
        before=(KeyOp("COPY", key, ("riders:seen-before",)),),
        after=(KeyOp("COPY", key, ("riders:seen-after",)),),
    )

    updated = await store.update("t-1", _start, expected=record, riders=snapshots)

    assert updated is not None
    assert raw.get("riders:seen-before") == encode(record)
    assert raw.get("riders:seen-after") == encode(updated)


@pytest.mark.asyncio
async def test_riders_run_once_each_when_the_hint_loses_a_race(
    store: RedisStore, raw: redis.Redis
) -> None:
    stale = make_record("t-1")
    await store.create(stale)
    moved = await store.update("t-1", lambda r: r.replace(worker="elsewhere"))

    updated = await store.update("t-1", _start, expected=stale, riders=RIDERS)

    assert moved is not None
    assert updated == _start(moved)
    # The lost compare-and-set ran `before` but not `after`; the winning one ran `after` only.
    assert _log(raw) == ["before", "after"]


@pytest.mark.asyncio
async def test_riders_after_run_alone_when_the_mutation_declines(
    store: RedisStore, raw: redis.Redis
) -> None:
    record = make_record("t-1")
    await store.create(record)

    assert await store.update("t-1", lambda r: None, expected=record, riders=RIDERS) is None
    assert _log(raw) == ["after"]
    assert await store.get("t-1") == record


@pytest.mark.asyncio
async def test_riders_undone_by_the_caller_when_a_lost_race_ends_declined(
    store: RedisStore, raw: redis.Redis
) -> None:
    stale = make_record("t-1")
    await store.create(stale)
    await store.update("t-1", lambda r: r.replace(status=TaskStatus.CANCELLED))

    def start_if_waiting(current: TaskResult) -> TaskResult | None:
        return _start(current) if current.status is TaskStatus.PENDING else None

    assert await store.update("t-1", start_if_waiting, expected=stale, riders=RIDERS) is None
    # `before` rode on the compare-and-set that found the record changed; `after` still ran.
    assert _log(raw) == ["before", "after"]


@pytest.mark.asyncio
async def test_riders_run_when_the_record_is_missing(store: RedisStore, raw: redis.Redis) -> None:
    assert await store.update("gone", _start, expected=make_record("gone"), riders=RIDERS) is None
    assert _log(raw) == ["before", "after"]
    assert await store.get("gone") is None


@pytest.mark.asyncio
async def test_a_failing_rider_does_not_stop_the_write(store: RedisStore, raw: redis.Redis) -> None:
    record = make_record("t-1")
    await store.create(record)
    raw.set("riders:a-string", "x")
    wrong_type = Riders(
        before=(KeyOp("HSET", "riders:a-string", ("f", "v")),),
        after=(KeyOp("ZREM", "riders:a-string", ("m",)), KeyOp("LPUSH", LOG, ("after",))),
    )

    updated = await store.update("t-1", _start, expected=record, riders=wrong_type)

    assert updated == _start(record)
    assert await store.get("t-1") == updated
    assert _log(raw) == ["after"]


@pytest.mark.asyncio
async def test_the_memory_store_ignores_riders() -> None:
    store = MemoryStore()
    record = make_record("t-1")
    await store.create(record)

    assert await store.update("t-1", _start, riders=RIDERS) == _start(record)
