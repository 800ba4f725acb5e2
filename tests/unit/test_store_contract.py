"""One contract, two stores: every test here runs on the memory store and on a real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.tasks.models import Progress, TaskError, TaskResult, TaskStatus
from app.core.tasks.store import QueuePush, ResultStore
from app.core.tasks.store.memory import MemoryStore
from app.core.tasks.store.redis import RedisStore
from scripts.harness.processes import RedisServer

BASE_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_record(
    task_id: str,
    *,
    name: str = "contract_task",
    status: TaskStatus = TaskStatus.PENDING,
    offset: int = 0,
) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        name=name,
        status=status,
        executor="background",
        queue="light",
        args=[1, "two"],
        kwargs={"three": 3.0},
        submitted_at=BASE_TIME + timedelta(seconds=offset),
    )


@pytest.mark.asyncio
async def test_create_stores_a_new_record(store: ResultStore) -> None:
    record = make_record("t-1")

    stored, created = await store.create(record)

    assert created is True
    assert stored == record
    assert await store.get("t-1") == record


@pytest.mark.asyncio
async def test_create_with_an_existing_id_returns_the_first_record_unchanged(
    store: ResultStore,
) -> None:
    first = make_record("t-1", name="first")
    await store.create(first)

    stored, created = await store.create(make_record("t-1", name="second", offset=5))

    assert created is False
    assert stored == first
    assert await store.get("t-1") == first


@pytest.mark.asyncio
async def test_create_many_stores_each_new_record_and_reports_it_created(
    store: ResultStore,
) -> None:
    records = [make_record(f"t-{i}", offset=i) for i in range(3)]

    outcomes = await store.create_many(records)

    assert outcomes == [(record, True) for record in records]
    assert [await store.get(f"t-{i}") for i in range(3)] == records
    assert [r.task_id for r in await store.list()] == ["t-2", "t-1", "t-0"]


@pytest.mark.asyncio
async def test_create_many_leaves_existing_ids_unchanged_and_creates_the_rest(
    store: ResultStore,
) -> None:
    first = make_record("t-1", name="first", offset=1)
    await store.create(first)

    outcomes = await store.create_many(
        [make_record("t-2", offset=2), make_record("t-1", name="second", offset=9)]
    )

    assert outcomes == [(make_record("t-2", offset=2), True), (first, False)]
    assert await store.get("t-1") == first
    # The re-submitted id keeps its place in the listing (its first submission).
    assert [r.task_id for r in await store.list()] == ["t-2", "t-1"]


@pytest.mark.asyncio
async def test_create_many_with_an_id_repeated_in_the_batch_keeps_the_first(
    store: ResultStore,
) -> None:
    first = make_record("dup", name="first")

    outcomes = await store.create_many(
        [first, make_record("other"), make_record("dup", name="second", offset=5)]
    )

    assert outcomes == [(first, True), (make_record("other"), True), (first, False)]
    assert await store.get("dup") == first


@pytest.mark.asyncio
async def test_create_many_of_nothing_writes_nothing(store: ResultStore) -> None:
    assert await store.create_many([]) == []
    assert await store.list() == []


@pytest.mark.asyncio
async def test_get_of_an_unknown_id_returns_none(store: ResultStore) -> None:
    assert await store.get("never-created") is None


@pytest.mark.asyncio
async def test_update_applies_the_mutation_and_returns_the_new_record(store: ResultStore) -> None:
    await store.create(make_record("t-1"))

    updated = await store.update("t-1", lambda r: r.replace(status=TaskStatus.STARTED, attempts=1))

    assert updated is not None
    assert updated.status is TaskStatus.STARTED
    assert updated.attempts == 1
    assert await store.get("t-1") == updated


@pytest.mark.asyncio
async def test_update_declined_by_the_mutation_changes_nothing(store: ResultStore) -> None:
    record = make_record("t-1")
    await store.create(record)
    seen: list[TaskResult] = []

    def decline(current: TaskResult) -> TaskResult | None:
        seen.append(current)
        return None

    assert await store.update("t-1", decline) is None
    assert seen == [record]
    assert await store.get("t-1") == record


@pytest.mark.asyncio
async def test_update_of_a_missing_record_returns_none_without_calling_mutate(
    store: ResultStore,
) -> None:
    calls: list[TaskResult] = []

    def mutate(current: TaskResult) -> TaskResult:
        calls.append(current)
        return current

    assert await store.update("missing", mutate) is None
    assert calls == []
    assert await store.get("missing") is None


@pytest.mark.asyncio
async def test_concurrent_updates_are_all_applied(store: ResultStore) -> None:
    await store.create(make_record("t-1"))

    async def increment() -> None:
        await store.update("t-1", lambda r: r.replace(attempts=r.attempts + 1))

    await asyncio.gather(*(increment() for _ in range(50)))

    record = await store.get("t-1")
    assert record is not None
    assert record.attempts == 50


@pytest.mark.asyncio
async def test_list_returns_newest_first(store: ResultStore) -> None:
    for i in range(5):
        await store.create(make_record(f"t-{i}", offset=i))

    listed = await store.list()

    assert [r.task_id for r in listed] == ["t-4", "t-3", "t-2", "t-1", "t-0"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": TaskStatus.SUCCESS}, ["t-3", "t-1"]),
        ({"name": "beta"}, ["t-3", "t-2"]),
        ({"status": TaskStatus.SUCCESS, "name": "beta"}, ["t-3"]),
        ({"status": TaskStatus.CANCELLED}, []),
        ({"limit": 2}, ["t-3", "t-2"]),
        ({"name": "alpha", "limit": 1}, ["t-1"]),
    ],
)
async def test_list_filters_by_status_and_name_and_honours_limit(
    store: ResultStore, filters: dict, expected: list[str]
) -> None:
    layout = [
        ("t-0", "alpha", TaskStatus.PENDING),
        ("t-1", "alpha", TaskStatus.SUCCESS),
        ("t-2", "beta", TaskStatus.FAILURE),
        ("t-3", "beta", TaskStatus.SUCCESS),
    ]
    for offset, (task_id, name, status) in enumerate(layout):
        await store.create(make_record(task_id, name=name, status=status, offset=offset))

    listed = await store.list(**filters)

    assert [r.task_id for r in listed] == expected


@pytest.mark.asyncio
async def test_list_sees_status_changes_made_by_update(store: ResultStore) -> None:
    await store.create(make_record("t-0", offset=0))
    await store.create(make_record("t-1", offset=1))

    await store.update("t-0", lambda r: r.replace(status=TaskStatus.SUCCESS))

    assert [r.task_id for r in await store.list(status=TaskStatus.SUCCESS)] == ["t-0"]
    assert [r.task_id for r in await store.list(status=TaskStatus.PENDING)] == ["t-1"]


@pytest.mark.asyncio
async def test_claims_map_task_ids_to_owners_until_released(store: ResultStore) -> None:
    assert await store.claims() == {}

    await store.claim("t-1", "runner-a")
    await store.claim("t-2", "runner-a")
    await store.claim("t-3", "runner-b")
    assert await store.claims() == {"t-1": "runner-a", "t-2": "runner-a", "t-3": "runner-b"}

    await store.release(["t-1", "t-3", "never-claimed"])
    assert await store.claims() == {"t-2": "runner-a"}

    await store.release([])
    await store.release(iter(["t-2"]))
    assert await store.claims() == {}


@pytest.mark.asyncio
async def test_heartbeat_keeps_a_runner_live_until_its_ttl_expires(store: ResultStore) -> None:
    await store.heartbeat("runner-a", ttl=0.6)
    await store.heartbeat("runner-b", ttl=30)

    assert await store.live_runners(["runner-a", "runner-b", "runner-c"]) == {
        "runner-a",
        "runner-b",
    }
    await asyncio.sleep(0.8)
    assert await store.live_runners(["runner-a", "runner-b", "runner-c"]) == {"runner-b"}
    assert await store.live_runners([]) == set()


@pytest.mark.asyncio
async def test_forget_runner_ends_its_heartbeat_at_once(store: ResultStore) -> None:
    await store.heartbeat("runner-a", ttl=30)
    await store.heartbeat("runner-b", ttl=30)

    await store.forget_runner("runner-a")

    assert await store.live_runners(["runner-a", "runner-b"]) == {"runner-b"}


@pytest.mark.asyncio
async def test_lease_is_renewed_by_its_owner_and_refused_to_others(store: ResultStore) -> None:
    assert await store.acquire_lease("scheduler", "owner-a", ttl=30) is True
    assert await store.acquire_lease("scheduler", "owner-a", ttl=30) is True
    assert await store.acquire_lease("scheduler", "owner-b", ttl=30) is False
    # Leases are independent by name.
    assert await store.acquire_lease("other", "owner-b", ttl=30) is True


@pytest.mark.asyncio
async def test_released_lease_can_be_taken_by_another_owner(store: ResultStore) -> None:
    await store.acquire_lease("scheduler", "owner-a", ttl=30)

    await store.release_lease("scheduler", "owner-b")  # not the holder: no effect
    assert await store.acquire_lease("scheduler", "owner-b", ttl=30) is False

    await store.release_lease("scheduler", "owner-a")
    assert await store.acquire_lease("scheduler", "owner-b", ttl=30) is True


@pytest.mark.asyncio
async def test_lease_expires_after_its_ttl(store: ResultStore) -> None:
    await store.acquire_lease("scheduler", "owner-a", ttl=0.6)
    assert await store.acquire_lease("scheduler", "owner-b", ttl=0.6) is False

    await asyncio.sleep(0.8)

    assert await store.acquire_lease("scheduler", "owner-b", ttl=30) is True
    assert await store.acquire_lease("scheduler", "owner-a", ttl=30) is False


@pytest.mark.asyncio
async def test_lease_renewal_extends_its_ttl(store: ResultStore) -> None:
    await store.acquire_lease("scheduler", "owner-a", ttl=1.0)
    await asyncio.sleep(0.6)
    assert await store.acquire_lease("scheduler", "owner-a", ttl=1.0) is True
    await asyncio.sleep(0.6)  # 1.2 s after the first grant: only the renewal keeps it

    assert await store.acquire_lease("scheduler", "owner-b", ttl=30) is False


@pytest.mark.asyncio
async def test_ping_answers(store: ResultStore) -> None:
    assert await store.ping() is None


@pytest.mark.asyncio
async def test_record_round_trips_through_the_store_unchanged(store: ResultStore) -> None:
    started = datetime(2024, 5, 1, 12, 0, 1, 123456, tzinfo=UTC)
    record = TaskResult(
        task_id="full-1",
        name="contract_task",
        status=TaskStatus.FAILURE,
        executor="background",
        queue="heavy",
        args=[1, 2.5, "x", None, True, [1, [2]], {"k": "v"}],
        kwargs={"nested": {"list": [1, 2], "unicode": "héllo ✓"}},
        result={"partial": [1, 2, 3]},
        error=TaskError(type="ValueError", message="bad", traceback="Traceback...\nValueError"),
        attempts=3,
        progress=Progress(fraction=0.75, message="three quarters"),
        submitted_at=BASE_TIME,
        started_at=started,
        finished_at=started + timedelta(seconds=2, microseconds=5),
        worker="host:123",
        cancel_requested=True,
    )
    await store.create(record)

    loaded = await store.get("full-1")

    assert loaded == record
    assert loaded is not None
    assert loaded.submitted_at.utcoffset() == timedelta(0)
    assert await store.update("full-1", lambda r: r.replace(worker="other")) == record.replace(
        worker="other"
    )
    assert await store.list() == [record.replace(worker="other")]


@pytest.mark.asyncio
async def test_redis_record_key_expires_and_recent_index_is_trimmed(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_url, prefix="trim:", result_ttl=600, recent_max=5)
    raw = redis_server.client()
    try:
        for i in range(8):
            await store.create(make_record(f"t-{i}", offset=i))
        await store.update("t-0", lambda r: r.replace(status=TaskStatus.STARTED))

        for i in range(8):
            assert 0 < raw.ttl(f"trim:task:t-{i}") <= 600
        assert raw.zrevrange("trim:tasks:recent", 0, -1) == ["t-7", "t-6", "t-5", "t-4", "t-3"]
        assert [r.task_id for r in await store.list(limit=100)] == [
            "t-7",
            "t-6",
            "t-5",
            "t-4",
            "t-3",
        ]
    finally:
        raw.close()
        await store.close()


@pytest.mark.asyncio
async def test_redis_create_is_one_round_trip_and_a_resubmit_changes_nothing(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_url, prefix="one:", result_ttl=600, recent_max=3)
    raw = redis_server.client()
    try:
        for i in range(4):
            await store.create(make_record(f"t-{i}", offset=i))
        assert raw.zrange("one:tasks:recent", 0, -1) == ["t-1", "t-2", "t-3"]
        scores = raw.zrange("one:tasks:recent", 0, -1, withscores=True)
        ttl = raw.ttl("one:task:t-0")
        before = _command_calls(raw)

        # t-0 was trimmed out of the index, t-2 is in it: neither is re-added nor re-scored.
        outcomes = await store.create_many(
            [make_record("t-0", offset=50), make_record("t-2", offset=60)]
        )

        assert [created for _, created in outcomes] == [False, False]
        assert raw.zrange("one:tasks:recent", 0, -1, withscores=True) == scores
        assert raw.ttl("one:task:t-0") <= ttl
        after = _command_calls(raw)
        ran = {name: after[name] - before[name] for name in after}
        # One script call (the first use on a server may be an EVAL); inside it, one SET NX
        # and one GET per record, and no index write at all.
        assert ran["evalsha"] + ran["eval"] == 1
        assert (ran["set"], ran["get"], ran["zadd"], ran["zremrangebyrank"]) == (2, 2, 0, 0)
    finally:
        raw.close()
        await store.close()


@pytest.mark.asyncio
async def test_redis_create_pushes_a_message_only_with_a_created_record(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_url, prefix="push:")
    raw = redis_server.client()
    try:
        _, created = await store.create(make_record("t-1"), push=QueuePush("q", "first"))
        _, again = await store.create(make_record("t-1"), push=QueuePush("q", "second"))
        outcomes = await store.create_many(
            [make_record("t-2"), make_record("t-1"), make_record("t-3")],
            pushes=[QueuePush("q", "m2"), QueuePush("q", "third"), None],
        )

        assert (created, again) == (True, False)
        assert [created for _, created in outcomes] == [True, False, True]
        assert raw.lrange("q", 0, -1) == ["m2", "first"]  # LPUSH order: newest at the head
    finally:
        raw.close()
        await store.close()


@pytest.mark.asyncio
async def test_memory_store_refuses_a_message_it_has_no_broker_for() -> None:
    store = MemoryStore()

    with pytest.raises(ValueError, match="no broker"):
        await store.create(make_record("t-1"), push=QueuePush("q", "m"))

    assert await store.get("t-1") is None
    assert store.push_url is None


def _command_calls(raw: Any) -> dict[str, int]:
    """How often the server ran each command so far (commands inside a script included)."""
    stats = raw.info("commandstats")
    names = ("evalsha", "eval", "set", "get", "zadd", "zremrangebyrank")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names}


@pytest.mark.asyncio
async def test_redis_create_many_above_one_script_chunk_creates_all_and_trims_once(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_url, prefix="big:", result_ttl=600, recent_max=1000)
    raw = redis_server.client()
    try:
        records = [make_record(f"t-{i:04d}", offset=i) for i in range(1200)]

        outcomes = await store.create_many(records)

        assert all(created for _, created in outcomes)
        assert raw.zcard("big:tasks:recent") == 1000
        assert raw.zrange("big:tasks:recent", 0, 0) == ["t-0200"]
        assert await store.get("t-0000") == records[0]
    finally:
        raw.close()
        await store.close()


@pytest.mark.asyncio
async def test_redis_list_skips_expired_records_without_losing_live_ones(
    redis_url: str, redis_server: RedisServer
) -> None:
    # More records than one listing page (200), the newest of them expired: paging must not
    # shift past live records when it drops the expired ids from the index.
    lasting = RedisStore(redis_url, prefix="page:", result_ttl=3600, recent_max=1000)
    short = RedisStore(redis_url, prefix="page:", result_ttl=1, recent_max=1000)
    try:
        for i in range(250):
            await lasting.create(make_record(f"live-{i:03d}", offset=i))
        for i in range(20):
            await short.create(make_record(f"gone-{i:03d}", offset=1000 + i))
        client = redis_server.client()
        try:
            for _ in range(60):
                if client.exists(*(f"page:task:gone-{i:03d}" for i in range(20))) == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("redis never expired the 1 s records")
        finally:
            client.close()

        listed = await lasting.list(limit=1000)

        assert [r.task_id for r in listed] == [f"live-{i:03d}" for i in reversed(range(250))]
    finally:
        await lasting.close()
        await short.close()


@pytest.mark.asyncio
async def test_redis_store_reconnects_after_a_redis_restart_without_failing_a_command(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url, prefix="test:")
    try:
        assert await store.get("before") is None
        redis_server.stop()
        redis_server.start()
        # The pooled connection died with the old server: the next command must re-dial.
        assert await store.get("after") is None
        assert await store.acquire_lease("after-restart", "me", 5)
    finally:
        await store.close()
