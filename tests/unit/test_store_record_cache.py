"""The Redis store's record cache (the JSON of records it just read or wrote, for update()'s
compare-and-set hint) is bounded by bytes: a big record is not kept at all, and small ones only
up to a total, so an api that handles megabyte records does not pin them (real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.store.redis import _KNOWN_ENTRY_MAX, _KNOWN_MAX_BYTES, RedisStore


def record(task_id: str, payload: int) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        name="cache_task",
        status=TaskStatus.PENDING,
        executor="background",
        queue="light",
        args=["x" * payload],
    )


def start(current: TaskResult) -> TaskResult:
    return current.replace(status=TaskStatus.STARTED, attempts=current.attempts + 1)


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    backend = RedisStore(redis_url, prefix="cache-test:")
    yield backend
    await backend.close()


def cached_bytes(store: RedisStore) -> int:
    return sum(len(raw) for _, raw in store._known.values())


@pytest.mark.asyncio
async def test_a_big_record_is_not_cached_and_its_updates_still_apply(store: RedisStore) -> None:
    big = record("big", 2 * _KNOWN_ENTRY_MAX)
    await store.create(big)
    read = await store.get("big")
    assert read is not None

    started = await store.update("big", start, expected=read)
    finished = await store.update(
        "big", lambda r: r.replace(status=TaskStatus.SUCCESS), expected=started
    )

    assert "big" not in store._known
    assert finished is not None
    assert await store.get("big") == finished


@pytest.mark.asyncio
async def test_the_cache_holds_at_most_its_byte_budget(store: RedisStore) -> None:
    payload = _KNOWN_ENTRY_MAX // 2  # each cacheable, together far more than the budget
    for n in range(3 * _KNOWN_MAX_BYTES // payload):
        await store.create(record(f"t-{n}", payload))
        await store.update(f"t-{n}", start)
        assert cached_bytes(store) <= _KNOWN_MAX_BYTES

    assert cached_bytes(store) > _KNOWN_MAX_BYTES // 2  # still used, just bounded
    assert store._known_bytes == cached_bytes(store)
