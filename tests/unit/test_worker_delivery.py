"""app.workers.delivery against a real redis-server, without a Celery worker process: what one
delivered message costs (loop hops, Redis commands) and the redelivery take-over path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvloop

from app.config import Settings
from app.core.tasks.models import TaskResult, TaskStatus, utcnow
from app.core.tasks.registry import TaskRegistry, task
from app.workers.delivery import CELERY, Delivery, deliver, new_record
from app.workers.runtime import Runtime
from tests.support.presence import active_ids

REGISTRY = TaskRegistry()
HOST = "delivery-test@host"
#: What the body saw in `active:light` while it ran (the bookkeeping KEDA reads).
seen_active: list[bool] = []
_client: dict[str, redis.Redis] = {}


@task("delivered_job", target=REGISTRY)
def delivered_job(x: int) -> int:
    """Doubles x, noting whether its own id was in the active set meanwhile."""
    client = _client["redis"]
    seen_active.append(bool(client.zcard("tasklane:active:light")))
    return 2 * x


@task("delivered_idempotent_job", idempotent=True, target=REGISTRY)
def delivered_idempotent_job(x: int) -> int:
    """Like delivered_job, but safe to run again after a lost attempt."""
    return 2 * x


@task("delivered_failing_job", target=REGISTRY)
def delivered_failing_job(x: int) -> int:
    """Always fails."""
    raise ValueError(f"no {x}")


@pytest.fixture
def runtime(redis_url: str) -> Iterator[Runtime]:
    settings = Settings(
        store="redis",
        executor="celery",
        redis_url=redis_url,
        celery_broker_url=redis_url,
        scheduler="off",
    )
    rt = Runtime(settings, registry=REGISTRY)
    _client["redis"] = redis.Redis.from_url(redis_url, decode_responses=True)
    seen_active.clear()
    yield rt
    _client.pop("redis").close()
    rt.run(rt.store.close())
    rt.loop.call_soon_threadsafe(rt.loop.stop)


def _delivery(record: TaskResult) -> Delivery:
    return Delivery(
        task_id=record.task_id,
        spec=REGISTRY.get(record.name),
        queue="light",
        hostname=HOST,
        args=list(record.args),
        kwargs=dict(record.kwargs),
    )


def _stored(rt: Runtime, name: str = "delivered_job", **changes: Any) -> TaskResult:
    record = new_record(REGISTRY.get(name), str(uuid.uuid4()), "light", [21], {})
    record = record.replace(**changes)
    rt.run(rt.store.create(record))
    return record


def _calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    names = ("get", "evalsha", "eval", "exec", "watch", "zadd", "hset", "zrem", "hdel")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names}


def _count_hops(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    hops: list[object] = []
    run = rt.run

    def counting(coro: Any) -> Any:
        hops.append(coro)
        return run(coro)

    monkeypatch.setattr(rt, "run", counting)
    return hops


def test_a_waiting_task_is_one_loop_hop_and_three_round_trips(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(_delivery(_stored(runtime)), runtime)  # loads the scripts: the counts are exact
    record = _stored(runtime)
    client = _client["redis"]
    hops = _count_hops(runtime, monkeypatch)
    before = _calls(client)

    outcome = deliver(_delivery(record), runtime)

    ran = {name: count - before[name] for name, count in _calls(client).items()}
    assert outcome.ran is True
    assert outcome.record is not None
    assert (outcome.record.status, outcome.record.result) == (TaskStatus.SUCCESS, 42)
    assert len(hops) == 1
    # Round trips: the record GET, STARTED and SUCCESS (one EVALSHA each, whose GET and SET run
    # inside the script, with the active-set entry's ZADD+HSET and ZREM+HDEL riding along).
    assert (ran["evalsha"], ran["eval"], ran["exec"], ran["watch"]) == (2, 0, 0, 0)
    assert ran["get"] == 1 + 2
    assert (ran["zadd"], ran["hset"], ran["zrem"], ran["hdel"]) == (1, 1, 1, 1)
    assert seen_active == [True, True]
    assert active_ids(client, runtime.keys, ["light"]) == {"light": set()}


def test_the_runtime_loop_is_uvloop(runtime: Runtime) -> None:
    """Each delivery's round trips run on this loop: uvloop's, a dependency (uvicorn[standard]),
    takes about a quarter less CPU per Redis command than asyncio's default loop."""
    assert isinstance(runtime.loop, uvloop.Loop)


def test_a_finished_task_is_not_run_again_nor_marked_active(runtime: Runtime) -> None:
    record = _stored(runtime, status=TaskStatus.SUCCESS, result=42, finished_at=utcnow())
    client = _client["redis"]
    before = _calls(client)

    outcome = deliver(_delivery(record), runtime)

    assert outcome.ran is False
    assert _calls(client)["exec"] == before["exec"]
    assert seen_active == []


@pytest.mark.parametrize(
    ("name", "status", "ran"),
    [
        ("delivered_idempotent_job", TaskStatus.SUCCESS, True),
        ("delivered_job", TaskStatus.FAILURE, False),
    ],
)
def test_a_task_left_started_by_a_dead_worker_is_taken_over(
    runtime: Runtime, name: str, status: TaskStatus, ran: bool
) -> None:
    # STARTED by a worker with no heartbeat at all: that attempt can no longer be running.
    record = _stored(
        runtime,
        name,
        status=TaskStatus.STARTED,
        attempts=1,
        executor=CELERY,
        worker="dead@host",
        started_at=utcnow(),
    )

    outcome = deliver(_delivery(record), runtime)

    stored = runtime.run(runtime.store.get(record.task_id))
    assert stored is not None
    assert (outcome.ran, stored.status) == (ran, status)
    if status is TaskStatus.FAILURE:
        assert stored.error is not None
        assert stored.error.type.endswith("Interrupted")
    else:
        assert stored.attempts == 2


def _active_entries(client: redis.Redis, rt: Runtime) -> tuple[set[str], dict[str, str]]:
    return (
        active_ids(client, rt.keys, ["light"])["light"],
        client.hgetall(rt.keys.worker_active(HOST)),
    )


def test_a_failing_task_leaves_no_active_entry_in_three_round_trips(runtime: Runtime) -> None:
    deliver(_delivery(_stored(runtime)), runtime)  # loads the scripts: the counts are exact
    record = _stored(runtime, "delivered_failing_job")
    client = _client["redis"]
    before = _calls(client)

    outcome = deliver(_delivery(record), runtime)

    ran = {name: count - before[name] for name, count in _calls(client).items()}
    assert outcome.record is not None
    assert outcome.record.status is TaskStatus.FAILURE
    assert (ran["evalsha"], ran["get"], ran["exec"]) == (2, 1 + 2, 0)
    assert _active_entries(client, runtime) == (set(), {})


def test_an_entry_added_with_a_start_that_is_then_declined_is_removed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker reads the record PENDING; it is cancelled before the STARTED write, whose step
    # adds the active entry, finds the record changed, and declines on the cancelled one.
    record = _stored(runtime)
    cancelled = runtime.run(
        runtime.store.update(record.task_id, lambda r: r.replace(status=TaskStatus.CANCELLED))
    )
    reads = [record]
    get = runtime.store.get

    async def stale_first(task_id: str) -> TaskResult | None:
        return reads.pop() if reads else await get(task_id)

    monkeypatch.setattr(runtime.store, "get", stale_first)
    client = _client["redis"]
    before = _calls(client)

    outcome = deliver(_delivery(record), runtime)

    ran = {name: count - before[name] for name, count in _calls(client).items()}
    assert outcome.ran is False
    assert runtime.run(get(record.task_id)) == cancelled
    assert seen_active == []
    assert (ran["zadd"], ran["hset"]) == (1, 1)  # added with the attempted STARTED write
    assert _active_entries(client, runtime) == (set(), {})  # and removed again


def test_a_task_cancelled_while_waiting_is_never_marked_active(runtime: Runtime) -> None:
    record = _stored(runtime, cancel_requested=True)
    client = _client["redis"]
    before = _calls(client)

    outcome = deliver(_delivery(record), runtime)

    ran = {name: count - before[name] for name, count in _calls(client).items()}
    assert outcome.ran is False
    assert outcome.record is not None
    assert outcome.record.status is TaskStatus.CANCELLED
    assert (ran["zadd"], ran["hset"]) == (0, 0)
    assert _active_entries(client, runtime) == (set(), {})
