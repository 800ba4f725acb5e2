"""CeleryExecutor publishing to a real redis-server (no worker needed: the message is read back
from the queue list), failing fast against a dead broker, and revoking on cancel."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis
from celery import Celery

from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.errors import BrokerUnavailable, ExecutorUnavailable
from app.core.tasks.executors.base import Route, Submission
from app.core.tasks.executors.celery import CeleryExecutor
from app.core.tasks.models import DEFAULT_PRIORITY, SubmitOptions, TaskResult, TaskStatus
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.redis import RedisStore
from scripts.harness.processes import free_port
from scripts.harness.scaled_api import make_celery

PUBLISH_TIMEOUT = 0.5


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


REGISTRY = TaskRegistry()
task("heavy_job", weight="heavy", target=REGISTRY)(_noop)
task("light_job", target=REGISTRY)(_noop)
task("listed_job", target=REGISTRY)(_noop)
task("audio_job", weight="heavy", queue="audio", target=REGISTRY)(_noop)


def make_executor(
    celery_app: Celery,
    store: RedisStore | None,
    *,
    publish_timeout: float = PUBLISH_TIMEOUT,
    queues: QueueRouting | None = None,
) -> CeleryExecutor:
    return CeleryExecutor(
        celery_app,
        store,  # type: ignore[arg-type]
        publish_timeout=publish_timeout,
        queues=queues,
        registry=REGISTRY,
    )


def pending(task_id: str, name: str = "heavy_job") -> TaskResult:
    return TaskResult(
        task_id=task_id,
        name=name,
        status=TaskStatus.PENDING,
        executor="celery",
        queue=REGISTRY.get(name).queue,
        args=[1, "two"],
        kwargs={"three": 3.0},
    )


def planned(
    executor: CeleryExecutor, task_id: str, name: str = "heavy_job", countdown: float | None = None
) -> tuple[TaskResult, Route]:
    """A submit of `name` as the manager runs it: plan(), then the PENDING record it names. The
    message is left to dispatch() (send_task), which is what these tests watch."""
    call = Submission(
        task_id, REGISTRY.get(name), [1, "two"], {"three": 3.0}, SubmitOptions(countdown=countdown)
    )
    route = dataclasses.replace(executor.plan(call), message=None)
    return pending(task_id, name).replace(queue=route.queue), route


def read_message(raw: str) -> tuple[dict[str, Any], Any]:
    """kombu's Redis envelope -> (headers, decoded body)."""
    envelope = json.loads(raw)
    body = base64.b64decode(envelope["body"])
    return envelope["headers"], json.loads(body)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Celery]:
    app = make_celery(redis_url)
    yield app
    app.close()


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    backend = RedisStore(redis_url, prefix="test:")
    yield backend
    await backend.close()


#: Where a heavy task submitted without a priority waits: the middle level's sub-list.
DEFAULT_LIST = BROKER_LAYOUT.queue_list("heavy", DEFAULT_PRIORITY)


@pytest.mark.asyncio
async def test_publish_puts_the_message_in_the_queue_list(
    celery_app: Celery, store: RedisStore, client: redis.Redis
) -> None:
    executor = make_executor(celery_app, store)

    await executor.dispatch(*planned(executor, "t-1"))

    assert BROKER_LAYOUT.waiting(client, "heavy") == 1
    headers, body = read_message(client.lindex(DEFAULT_LIST, 0))
    assert (headers["id"], headers["task"]) == ("t-1", "heavy_job")
    assert body[0] == [1, "two"]
    assert body[1] == {"three": 3.0}
    assert headers["eta"] is None


@pytest.mark.asyncio
async def test_countdown_becomes_an_eta(
    celery_app: Celery, store: RedisStore, client: redis.Redis
) -> None:
    executor = make_executor(celery_app, store)

    await executor.dispatch(*planned(executor, "t-eta", countdown=30))

    headers, _ = read_message(client.lindex(DEFAULT_LIST, 0))
    assert headers["eta"] is not None


@pytest.mark.parametrize(
    ("name", "expected_list"),
    [
        ("heavy_job", "gpu-heavy"),
        ("light_job", "fast"),
        ("listed_job", "gpu-heavy"),  # light by weight, heavy by HEAVY_TASKS
        ("audio_job", "audio"),  # a custom queue stays as the spec says
    ],
)
@pytest.mark.asyncio
async def test_configured_queue_names_decide_the_list(
    celery_app: Celery, store: RedisStore, client: redis.Redis, name: str, expected_list: str
) -> None:
    queues = QueueRouting(light="fast", heavy="gpu-heavy", heavy_tasks=frozenset({"listed_job"}))
    executor = make_executor(celery_app, store, queues=queues)

    await executor.dispatch(*planned(executor, "t-q", name=name))

    assert BROKER_LAYOUT.waiting(client, expected_list) == 1


@pytest.mark.asyncio
async def test_dispatch_publishes_to_the_queue_its_record_names(
    celery_app: Celery, store: RedisStore, client: redis.Redis
) -> None:
    # After submit the record is the source (issue 12): no second routing decision at publish.
    executor = make_executor(celery_app, store)
    record, route = planned(executor, "t-rq")

    await executor.dispatch(record.replace(queue="elsewhere"), route)

    assert (BROKER_LAYOUT.waiting(client, "elsewhere"), BROKER_LAYOUT.waiting(client, "heavy")) == (
        1,
        0,
    )


@pytest.mark.asyncio
async def test_dead_broker_fails_with_broker_unavailable_within_the_publish_timeout(
    store: RedisStore,
) -> None:
    app = make_celery(f"redis://127.0.0.1:{free_port()}/0")
    executor = make_executor(app, store)
    started = time.monotonic()

    with pytest.raises(BrokerUnavailable) as caught:
        await executor.dispatch(*planned(executor, "t-dead"))

    assert time.monotonic() - started < 4 * PUBLISH_TIMEOUT
    assert isinstance(caught.value, ExecutorUnavailable)  # the API answers 503 + Retry-After
    assert caught.value.retry_after >= 1
    app.close()


async def _broadcasts(client: redis.Redis, action: Any) -> list[dict[str, Any]]:
    """Run action while listening to every pub/sub channel (kombu's fanout, which carries
    Celery's control broadcasts); returns the decoded message bodies seen."""
    pubsub = client.pubsub()
    pubsub.psubscribe("*")
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    await action()
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            seen.append(json.loads(base64.b64decode(json.loads(message["data"])["body"])))
    pubsub.close()
    return seen


@pytest.mark.asyncio
async def test_cancel_of_a_pending_task_broadcasts_a_revoke(
    celery_app: Celery, store: RedisStore, client: redis.Redis
) -> None:
    executor = make_executor(celery_app, store)
    await store.create(pending("t-revoke").replace(status=TaskStatus.CANCELLED))

    seen = await _broadcasts(client, lambda: executor.cancel("t-revoke"))

    assert [(body["method"], body["arguments"]["task_id"]) for body in seen] == [
        ("revoke", "t-revoke")
    ]
    assert seen[0]["arguments"]["terminate"] is False


@pytest.mark.asyncio
async def test_cancel_of_a_running_task_is_cooperative_and_sends_nothing(
    celery_app: Celery, store: RedisStore, client: redis.Redis
) -> None:
    executor = make_executor(celery_app, store)
    running = pending("t-run").replace(status=TaskStatus.STARTED, cancel_requested=True)
    await store.create(running)

    seen = await _broadcasts(client, lambda: executor.cancel("t-run"))

    assert seen == []


@pytest.mark.asyncio
async def test_revoke_against_a_dead_broker_is_logged_not_raised(store: RedisStore) -> None:
    app = make_celery(f"redis://127.0.0.1:{free_port()}/0")
    executor = make_executor(app, store)
    started = time.monotonic()

    assert await executor.revoke("t-dead") is False

    assert time.monotonic() - started < 4 * PUBLISH_TIMEOUT
    app.close()


def test_flags_and_describe() -> None:
    executor = make_executor(make_celery("redis://127.0.0.1:1/0"), None)

    info = executor.describe()

    assert info["name"] == "celery"
    assert info["durable"]
    assert info["supports_retry"]
    assert info["supports_delay"]
    assert info["supports_cancel_running"]
    assert info["queues"] == {"light": "light", "heavy": "heavy"}


@pytest.mark.asyncio
async def test_concurrent_publishes_all_land(
    celery_app: Celery, store: RedisStore, client: redis.Redis
) -> None:
    executor = make_executor(celery_app, store, publish_timeout=5)

    await asyncio.gather(*(executor.dispatch(*planned(executor, f"t-{i}")) for i in range(50)))

    assert BROKER_LAYOUT.waiting(client, "heavy") == 50


@pytest.mark.asyncio
async def test_celery_alone_answers_503_and_settles_the_record_when_the_broker_is_down(
    store: RedisStore,
) -> None:
    from app.core.tasks import TaskManager

    app = make_celery(f"redis://127.0.0.1:{free_port()}/0")
    manager = TaskManager(store=store, executor=make_executor(app, store), registry=REGISTRY)

    with pytest.raises(BrokerUnavailable):
        await manager.submit("heavy_job", 1, "two", three=3.0)

    [record] = await manager.list(name="heavy_job")
    assert (record.status, record.executor) == (TaskStatus.FAILURE, "celery")
    assert record.error is not None
    assert "not dispatched" in record.error.message
    app.close()
