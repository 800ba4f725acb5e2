"""submit and submit_many in bulk (issue 6), on a real redis-server: the Celery message goes out
in the record's own store step when the broker is the store's Redis, a batch is checked before
anything is written, publishes elsewhere share one producer, and every semantic of submit holds
(PENDING before the message, idempotent ids, fallbacks, FAILURE on refusal, hooks, metrics)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import redis
from celery import Celery
from fastapi import BackgroundTasks
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.tasks import TaskCall, TaskManager, TaskStatus
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.errors import BrokerUnavailable, InvalidTaskArgs
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.executors.celery import CeleryExecutor
from app.core.tasks.executors.hybrid import HybridExecutor
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.models import SubmitOptions, TaskResult
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.presence import WorkerKeys
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.memory import MemoryStore
from app.core.tasks.store.redis import RedisStore
from app.workers.celery_config import create_celery_app
from scripts.harness.processes import RedisServer, free_port

PREFIX = "sb:"
REGISTRY_ = TaskRegistry()
RUNS: list[str] = []


def _run(label: str) -> str:
    RUNS.append(label)
    return label


task("sb_light", target=REGISTRY_)(_run)
task("sb_heavy", weight="heavy", idempotent=True, target=REGISTRY_)(_run)
task("sb_strict", weight="heavy", fallback=False, target=REGISTRY_)(_run)


@pytest.fixture(autouse=True)
def _clean_runs() -> None:
    RUNS.clear()


class Seen(TaskHooks):
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def after_submit(self, record: TaskResult) -> None:
        self.submitted.append(record.task_id)


@dataclass
class Api:
    manager: TaskManager
    store: RedisStore
    broker: redis.Redis
    hooks: Seen
    executor: Any
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def queued(self, queue: str) -> list[dict[str, Any]]:
        """The messages in a queue list, oldest first (the next a worker takes)."""
        return [
            json.loads(raw)
            for name in BROKER_LAYOUT.queue_lists(queue)  # the order a worker pops them
            for raw in reversed(self.broker.lrange(name, 0, -1))
        ]


def task_ids(messages: list[dict[str, Any]]) -> list[str]:
    return [message["headers"]["id"] for message in messages]


def celery_app(broker_url: str, store_url: str) -> Celery:
    """The api's Celery app: its light and heavy queues declared (direct exchanges)."""
    return create_celery_app(Settings(celery_broker_url=broker_url, redis_url=store_url))


@pytest_asyncio.fixture
async def make_api(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    built: list[Api] = []

    async def build(
        *, broker_url: str | None = None, hybrid: bool = False, publish_timeout: float = 0.5
    ) -> Api:
        store = RedisStore(redis_url, prefix=PREFIX)
        app = celery_app(broker_url or redis_url, redis_url)
        hooks = Seen()
        celery = CeleryExecutor(
            app, store, publish_timeout=publish_timeout, hooks=hooks, registry=REGISTRY_
        )
        executor: Any = celery
        closers: list[Callable[[], Any]] = []
        if hybrid:
            monitor = WorkerMonitor(
                redis_url,
                prefix=PREFIX,
                heartbeat_interval=5.0,
                interval=60,
                queues=QueueRouting().queues(REGISTRY_),
                broker_url=redis_url,
            )
            background = BackgroundTasksExecutor(store, registry=REGISTRY_, hooks=hooks)
            executor = HybridExecutor(
                background, celery, monitor, store=store, registry=REGISTRY_, hooks=hooks
            )
            keys = WorkerKeys(PREFIX)
            beat = redis.Redis.from_url(redis_url, decode_responses=True)
            beat.zadd(keys.workers, {"w1": time.time()})
            beat.hset(keys.worker("w1"), mapping={"queues": "light,heavy", "concurrency": 2})
            beat.close()
            await monitor.refresh()
            closers.append(lambda: background.stop(grace=1))
        manager = TaskManager(store=store, executor=executor, registry=REGISTRY_, hooks=hooks)
        broker = redis.Redis.from_url(broker_url or redis_url, decode_responses=True)
        api = Api(manager, store, broker, hooks, executor, closers)
        closers += [lambda: celery.stop(grace=0), store.close, broker.close, app.close]
        built.append(api)
        return api

    yield build
    for api in built:
        for close in api.closers:
            result = close()
            if hasattr(result, "__await__"):
                await result


def commands(client: redis.Redis) -> dict[str, int]:
    """How often the server ran each command (those inside a script included)."""
    stats = client.info("commandstats")
    return {name[len("cmdstat_") :]: value["calls"] for name, value in stats.items()}


def ran(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two commands() readings, with their counts."""
    return {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] != before.get(name, 0)
    }


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the message in the record's own step ----------------------------------------------------------


@pytest.mark.asyncio
async def test_submit_many_writes_records_and_messages_in_one_script_call(
    make_api: Callable[..., Any],
) -> None:
    api = await make_api()
    assert api.executor.describe()["publish"] == "with the record"
    await api.manager.submit("sb_heavy", "warm")  # loads the script on this fresh server
    api.hooks.submitted.clear()
    submitted = sample("tasklane_submit_duration_seconds_count", executor="celery")
    before = commands(api.broker)

    ids = await api.manager.submit_many(TaskCall("sb_light", [f"t{i}"]) for i in range(30))

    calls = ran(before, commands(api.broker))
    assert calls.get("evalsha", 0) + calls.get("eval", 0) == 1
    # Inside the script: one LPUSH for all 30 messages (kombu would have sent 30).
    assert (calls["set"], calls["lpush"]) == (30, 1)
    messages = api.queued("light")
    assert task_ids(messages) == ids  # one message per task, in call order
    records = [await api.store.get(task_id) for task_id in ids]
    assert all(r is not None and r.status is TaskStatus.PENDING for r in records)
    assert [m["headers"]["task"] for m in messages] == ["sb_light"] * 30
    assert json.loads(base64.b64decode(messages[0]["body"]))[0] == ["t0"]
    assert api.hooks.submitted == ids
    assert sample("tasklane_submit_duration_seconds_count", executor="celery") == submitted + 30


@pytest.mark.asyncio
async def test_single_submit_sends_its_message_with_the_record(
    make_api: Callable[..., Any],
) -> None:
    api = await make_api()
    await api.manager.submit("sb_light", "warm")  # loads the script on this fresh server
    api.hooks.submitted.clear()
    before = commands(api.broker)

    task_id = await api.manager.submit("sb_heavy", "one", options=SubmitOptions(countdown=30))

    calls = ran(before, commands(api.broker))
    assert calls.get("evalsha", 0) + calls.get("eval", 0) == 1
    assert calls["lpush"] == 1  # inside the script
    [message] = api.queued("heavy")
    assert message["headers"]["id"] == task_id
    assert message["headers"]["eta"] is not None  # the countdown, as Celery's ETA
    assert (await api.store.get(task_id)).status is TaskStatus.PENDING
    assert api.hooks.submitted == [task_id]


@pytest.mark.asyncio
async def test_an_existing_id_sends_no_second_message(make_api: Callable[..., Any]) -> None:
    api = await make_api()
    same = SubmitOptions(task_id="sb-same")

    first = await api.manager.submit("sb_light", "first", options=same)
    again = await api.manager.submit("sb_light", "second", options=same)
    batch = await api.manager.submit_many(
        [TaskCall("sb_light", ["third"], options=same), TaskCall("sb_light", ["new"])]
    )

    assert first == again == batch[0] == "sb-same"
    assert task_ids(api.queued("light")) == ["sb-same", batch[1]]
    assert (await api.store.get("sb-same")).args == ["first"]
    assert api.hooks.submitted == ["sb-same", batch[1]]


@pytest.mark.asyncio
async def test_a_bad_call_in_a_batch_writes_nothing(make_api: Callable[..., Any]) -> None:
    api = await make_api()

    with pytest.raises(InvalidTaskArgs):
        await api.manager.submit_many(
            [TaskCall("sb_light", ["fine"]), TaskCall("sb_light", [1, 2]), TaskCall("sb_light")]
        )

    assert await api.manager.list() == []
    assert BROKER_LAYOUT.waiting(api.broker, "light") == 0
    assert api.hooks.submitted == []


@pytest.mark.asyncio
async def test_hybrid_tracks_the_dispatch_deadline_of_tasks_sent_with_their_record(
    make_api: Callable[..., Any],
) -> None:
    api = await make_api(hybrid=True)

    ids = await api.manager.submit_many(
        [TaskCall("sb_heavy", ["remote"]), TaskCall("sb_light", ["local"])]
    )

    assert [(await api.store.get(i)).executor for i in ids] == ["celery", "background"]
    assert task_ids(api.queued("heavy")) == ids[:1]
    assert len(api.executor.deadline) == 1
    assert (await api.manager.wait(ids[1], timeout=10)).status is TaskStatus.SUCCESS
    assert RUNS == ["local"]


@pytest.mark.asyncio
async def test_a_hybrid_submit_sent_with_its_record_looks_its_task_up_once(
    make_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manager resolves the spec; plan (route, queue, message) and the dispatch deadline
    # reuse it or the record (issue 12) instead of looking it up again each.
    api = await make_api(hybrid=True)
    seen: list[str] = []
    get = REGISTRY_.get
    monkeypatch.setattr(REGISTRY_, "get", lambda name: seen.append(name) or get(name))

    task_id = await api.manager.submit("sb_heavy", "remote")

    assert seen == ["sb_heavy"]
    assert task_ids(api.queued("heavy")) == [task_id]
    assert len(api.executor.deadline) == 1


# -- publishing to a broker elsewhere: one producer, one batch -------------------------------------


@pytest.mark.asyncio
async def test_a_batch_for_another_broker_is_published_in_call_order_on_long_lived_threads(
    make_api: Callable[..., Any], redis_url: str
) -> None:
    other = RedisServer()
    other.start()
    try:
        api = await make_api(broker_url=other.url)
        assert api.executor.describe()["publish"].startswith("send_task: the broker is not")
        await api.manager.submit("sb_light", "warm")  # starts the publisher threads
        before = {thread.ident for thread in threading.enumerate()}

        ids = await api.manager.submit_many(TaskCall("sb_light", [f"t{i}"]) for i in range(40))
        ids += [await api.manager.submit("sb_light", f"s{i}") for i in range(10)]

        # No thread per publish: at most the publisher pool's bound, reused (a second publisher
        # thread may start while the first is still busy with the warm-up call's publish).
        added = [t.name for t in threading.enumerate() if t.ident not in before]
        publishers = [t for t in threading.enumerate() if t.name.startswith("tasklane-publish-")]
        assert all(name.startswith("tasklane-publish-") for name in added), added
        assert len(publishers) <= api.executor.publisher.limit < 50
        assert task_ids(api.queued("light"))[1:] == ids
        records = [await api.store.get(task_id) for task_id in ids]
        assert all(r is not None and r.status is TaskStatus.PENDING for r in records)
        local = redis.Redis.from_url(redis_url)
        assert BROKER_LAYOUT.waiting(local, "light") == 0  # nothing on the store's Redis
        local.close()
    finally:
        other.cleanup()


@pytest.mark.asyncio
async def test_a_batch_larger_than_a_publish_chunk_and_kombu_without_batches(
    make_api: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = RedisServer()
    other.start()
    try:
        api = await make_api(broker_url=other.url)
        monkeypatch.setattr("app.core.tasks.executors.celery.PUBLISH_CHUNK", 7)
        ids = await api.manager.submit_many(TaskCall("sb_light", [f"t{i}"]) for i in range(20))
        # kombu < 5.7 has no Producer.batch(): one send_task after another on one producer.
        monkeypatch.delattr("kombu.messaging.Producer.batch")
        ids += await api.manager.submit_many(TaskCall("sb_light", [f"u{i}"]) for i in range(9))

        assert task_ids(api.queued("light")) == ids
    finally:
        other.cleanup()


@pytest.mark.asyncio
async def test_a_dead_broker_settles_the_whole_batch_and_raises_fast(
    make_api: Callable[..., Any],
) -> None:
    api = await make_api(broker_url=f"redis://127.0.0.1:{free_port()}/0", publish_timeout=0.5)
    started = time.monotonic()

    with pytest.raises(BrokerUnavailable):
        await api.manager.submit_many(TaskCall("sb_light", [f"t{i}"]) for i in range(1200))

    assert time.monotonic() - started < 6  # one failed chunk, not one timeout per chunk
    records = await api.manager.list(limit=2000)
    assert len(records) == 1200
    assert {r.status for r in records} == {TaskStatus.FAILURE}
    assert all("not dispatched" in r.error.message for r in records if r.error)
    assert api.hooks.submitted == []


@pytest.mark.asyncio
async def test_hybrid_batch_with_a_dead_broker_falls_back_and_refuses_only_the_strict_task(
    make_api: Callable[..., Any],
) -> None:
    api = await make_api(broker_url=f"redis://127.0.0.1:{free_port()}/0", hybrid=True)

    with pytest.raises(BrokerUnavailable):
        await api.manager.submit_many(
            [
                TaskCall("sb_heavy", ["rescued"]),
                TaskCall("sb_strict", ["refused"]),
                TaskCall("sb_light", ["local"]),
            ]
        )

    by_name = {r.name: r for r in await api.manager.list()}
    assert by_name["sb_strict"].status is TaskStatus.FAILURE
    for name in ("sb_heavy", "sb_light"):
        done = await api.manager.wait(by_name[name].task_id, timeout=10)
        assert (done.status, done.executor) == (TaskStatus.SUCCESS, "background")
    assert sorted(RUNS) == ["local", "rescued"]
    assert len(api.hooks.submitted) == 2


# -- in-process batches --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_background_batch_hands_each_task_to_background_tasks() -> None:
    store = MemoryStore()
    hooks = Seen()
    executor = BackgroundTasksExecutor(store, registry=REGISTRY_, hooks=hooks)
    manager = TaskManager(store=store, executor=executor, registry=REGISTRY_, hooks=hooks)
    background_tasks = BackgroundTasks()
    try:
        ids = await manager.submit_many(
            (TaskCall("sb_light", [f"t{i}"]) for i in range(5)),
            background_tasks=background_tasks,
        )

        assert len(background_tasks.tasks) == 5  # one hand-off each: one failure skips none
        records = [await manager.wait(task_id, timeout=10) for task_id in ids]
        assert [r.result for r in records] == [f"t{i}" for i in range(5)]
        assert hooks.submitted == ids
    finally:
        await executor.stop(grace=1)
