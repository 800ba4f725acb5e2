"""update(expected=...): the compare-and-set fast path. Same `store` fixture as the contract
suite (tests/unit/test_store_contract.py): every shared test runs on memory and on real Redis.

The hint may only ever save work: a stale or wrong one must give exactly what update() without
it gives, because execute() and the worker pass records that another process may have changed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.tasks.models import Progress, TaskError, TaskResult, TaskStatus
from app.core.tasks.store import ResultStore
from app.core.tasks.store import redis as redis_store
from app.core.tasks.store.redis import RedisStore, encode
from scripts.harness.processes import RedisServer
from tests.unit.test_store_contract import make_record


def _start(record: TaskResult) -> TaskResult:
    return record.replace(status=TaskStatus.STARTED, attempts=record.attempts + 1)


@pytest.mark.asyncio
async def test_update_with_the_stored_record_as_hint_applies_the_mutation(
    store: ResultStore,
) -> None:
    record = make_record("t-1")
    await store.create(record)

    updated = await store.update("t-1", _start, expected=record)

    assert updated == _start(record)
    assert await store.get("t-1") == updated


@pytest.mark.asyncio
async def test_update_with_a_stale_hint_applies_the_mutation_to_the_stored_record(
    store: ResultStore,
) -> None:
    stale = make_record("t-1")
    await store.create(stale)
    moved = await store.update("t-1", lambda r: r.replace(worker="elsewhere", attempts=4))
    assert moved is not None
    seen: list[TaskResult] = []

    def start(current: TaskResult) -> TaskResult:
        seen.append(current)
        return _start(current)

    updated = await store.update("t-1", start, expected=stale)

    assert updated == _start(moved)
    assert seen[-1] == moved  # the decision is always taken on what is stored
    assert await store.get("t-1") == updated


@pytest.mark.asyncio
async def test_update_with_a_hint_declined_on_the_stored_record_changes_nothing(
    store: ResultStore,
) -> None:
    stale = make_record("t-1")
    await store.create(stale)
    cancelled = await store.update("t-1", lambda r: r.replace(status=TaskStatus.CANCELLED))

    def start_if_waiting(current: TaskResult) -> TaskResult | None:
        return _start(current) if current.status is TaskStatus.PENDING else None

    assert await store.update("t-1", start_if_waiting, expected=stale) is None
    assert await store.get("t-1") == cancelled


@pytest.mark.asyncio
async def test_update_with_a_hint_of_a_missing_record_writes_nothing(store: ResultStore) -> None:
    assert await store.update("gone", _start, expected=make_record("gone")) is None
    assert await store.get("gone") is None


@pytest.mark.asyncio
async def test_concurrent_updates_with_the_same_stale_hint_are_all_applied(
    store: ResultStore,
) -> None:
    record = make_record("t-1")
    await store.create(record)

    async def increment() -> None:
        await store.update("t-1", lambda r: r.replace(attempts=r.attempts + 1), expected=record)

    await asyncio.gather(*(increment() for _ in range(50)))

    stored = await store.get("t-1")
    assert stored is not None
    assert stored.attempts == 50


def _full_record(task_id: str) -> TaskResult:
    started = datetime(2024, 5, 1, 12, 0, 1, 123456, tzinfo=UTC)
    return TaskResult(
        task_id=task_id,
        name="contract_task",
        status=TaskStatus.RETRY,
        executor="celery",
        queue="heavy",
        args=[1, 2.5, 3.0, "x", None, True, [1, [2]], {"k": "v"}, 10**20],
        kwargs={"nested": {"list": [1, 2], "unicode": "héllo ✓"}},
        result={"partial": [1, 2, 3]},
        error=TaskError(type="ValueError", message="bad", traceback="Traceback...\nValueError"),
        attempts=3,
        progress=Progress(fraction=0.75, message="three quarters"),
        submitted_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        started_at=started,
        finished_at=started + timedelta(seconds=2, microseconds=5),
        worker="host:123",
    )


def _calls(raw: Any) -> dict[str, int]:
    """How often the server ran each command so far (commands inside a script included)."""
    stats = raw.info("commandstats")
    names = ("evalsha", "eval", "get", "set", "watch", "multi", "exec")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names}


async def _load_script(store: RedisStore) -> None:
    """One update first, so the counts below are exact (a first use on a server is an EVAL)."""
    await store.create(make_record("warm-up"))
    await store.update("warm-up", _start)


@pytest.mark.asyncio
async def test_redis_update_with_a_hint_read_back_from_redis_is_one_script_call(
    redis_url: str, redis_server: RedisServer
) -> None:
    # The hint is compared as JSON bytes: a record read back must encode to exactly the bytes
    # stored, or every transition would silently fall back to the slower path.
    store = RedisStore(redis_url, prefix="cas:")
    raw = redis_server.client()
    try:
        await store.create(_full_record("t-1"))
        loaded = await store.get("t-1")
        assert loaded is not None
        await _load_script(store)
        before = _calls(raw)

        updated = await store.update("t-1", _start, expected=loaded)

        ran = {name: count - before[name] for name, count in _calls(raw).items()}
        assert updated == _start(loaded)
        # One EVALSHA; inside it one GET and one SET; no WATCH/MULTI/EXEC and no GET of ours.
        assert ran == {
            "evalsha": 1,
            "eval": 0,
            "get": 1,
            "set": 1,
            "watch": 0,
            "multi": 0,
            "exec": 0,
        }
        assert 0 < raw.ttl("cas:task:t-1") <= store._ttl
    finally:
        raw.close()
        await store.close()


@pytest.mark.asyncio
async def test_redis_update_without_a_hint_is_a_read_and_one_script_call(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_url, prefix="cas:")
    raw = redis_server.client()
    try:
        await store.create(make_record("t-1"))
        await _load_script(store)
        before = _calls(raw)

        await store.update("t-1", _start)

        ran = {name: count - before[name] for name, count in _calls(raw).items()}
        assert (ran["evalsha"], ran["get"], ran["watch"], ran["exec"]) == (1, 2, 0, 0)
    finally:
        raw.close()
        await store.close()


@pytest.mark.asyncio
async def test_redis_update_with_a_record_it_read_or_wrote_does_not_encode_it_again(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(redis_url, prefix="cas:")
    encoded: list[TaskResult] = []

    def counting(record: TaskResult) -> str:
        encoded.append(record)
        return encode(record)

    try:
        await store.create(make_record("t-1"))
        loaded = await store.get("t-1")
        assert loaded is not None
        monkeypatch.setattr(redis_store, "encode", counting)

        started = await store.update("t-1", _start, expected=loaded)
        assert started is not None
        finished = await store.update(
            "t-1", lambda r: r.replace(status=TaskStatus.SUCCESS), expected=started
        )

        # Only each new record is encoded: the hints' JSON is the one read or written.
        assert encoded == [started, finished]
        assert await store.get("t-1") == finished
        # An equal record that is not the one remembered is encoded: the cache is by identity.
        await store.update("t-1", _start, expected=finished.replace())
        assert encoded[2] == finished
        assert encoded[2] is not finished
    finally:
        await store.close()
