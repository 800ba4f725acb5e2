"""executors/wire.py: the Celery message tasklane pushes with a task's record is the one
celery_app.send_task would have published (read back from a real redis-server), and it is only
used where nothing else would see or change the message on the way."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery, signals
from kombu import Exchange, Queue

from app.config import Settings
from app.core.tasks.executors import wire
from app.core.tasks.executors.base import Submission
from app.core.tasks.executors.celery import CeleryExecutor
from app.core.tasks.executors.wire import WireFormat, redacted_reprs, same_redis, wire_problem
from app.core.tasks.models import SubmitOptions, TaskResult, TaskStatus
from app.core.tasks.redaction import REDACTED, Redaction
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.redis import RedisStore
from app.workers.celery_config import create_celery_app


def make_record(args: list[Any], kwargs: dict[str, Any], task_id: str = "wire-1") -> TaskResult:
    # A name the app has not bound: send_task then merges no task options, as for the api.
    return TaskResult(
        task_id=task_id,
        name="wire_probe",
        status=TaskStatus.PENDING,
        executor="celery",
        queue="light",
        args=args,
        kwargs=kwargs,
    )


def probe_call(executor: CeleryExecutor) -> Submission:
    """make_record([1], {})'s task as the manager hands it to plan()."""
    spec = executor.registry.get("wire_probe")
    return Submission("wire-1", spec, [1], {}, SubmitOptions())


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    celery = create_celery_app(Settings(celery_broker_url=redis_url, redis_url=redis_url))
    yield celery
    celery.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def sent_by_celery(
    app: Celery,
    client: redis.Redis,
    record: TaskResult,
    queue: str,
    countdown: float | None,
    **options: Any,
) -> dict[str, Any]:
    """The message send_task leaves in the queue's list, decoded."""
    return sent_with_list(app, client, record, queue, countdown, **options)[1]


def sent_with_list(
    app: Celery,
    client: redis.Redis,
    record: TaskResult,
    queue: str,
    countdown: float | None,
    **options: Any,
) -> tuple[str, dict[str, Any]]:
    """The list kombu chose for send_task's message (the only key that starts with the
    queue's name afterwards) and the message, decoded."""
    app.send_task(
        record.name,
        args=record.args,
        kwargs=record.kwargs,
        queue=queue,
        task_id=record.task_id,
        countdown=countdown,
        retry=False,
        **options,
    )
    [key] = client.keys(f"{queue}*")
    [raw] = client.lrange(key, 0, -1)
    client.delete(key)
    return key, json.loads(raw)


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its body decoded, and without what differs between any two
    publishes of the same task (a fresh delivery tag; the eta, read from the clock)."""
    headers = dict(message["headers"])
    headers.pop("eta")
    properties = dict(message["properties"])
    assert properties.pop("delivery_tag")
    return {
        **message,
        "body": json.loads(base64.b64decode(message["body"])),
        "headers": headers,
        "properties": properties,
    }


def eta(message: dict[str, Any]) -> float | None:
    value = message["headers"]["eta"]
    return datetime.fromisoformat(value).timestamp() if value else None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([1, "two"], {"three": 3.0}),
        ([], {}),
        (
            ["it's", 'say "hi"', "back\\slash", "new\nline", "é ✓", None, True, 2**70],
            {"deep": {"a": {"b": {"c": [1]}}}, "flat": [1.5, -0.0]},
        ),
        (["x" * 3000], {"many": list(range(500))}),
    ],
)
@pytest.mark.parametrize("countdown", [None, 30])
def test_the_message_is_the_one_send_task_publishes(
    app: Celery,
    client: redis.Redis,
    args: list[Any],
    kwargs: dict[str, Any],
    countdown: float | None,
) -> None:
    record = make_record(args, kwargs)

    push = WireFormat(app).push(record, "light", countdown, 0)
    theirs = sent_by_celery(app, client, record, "light", countdown, priority=0)

    assert push is not None
    assert push.key == "light"  # the base list: priority 0 is never a priority sub-list
    ours = json.loads(push.payload)
    assert comparable(ours) == comparable(theirs)
    assert ours["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]
    if countdown is None:
        assert eta(ours) is eta(theirs) is None
    else:
        assert eta(ours) == pytest.approx(eta(theirs), abs=1.0)
        assert eta(ours) == pytest.approx(time.time() + countdown, abs=2.0)


#: The list kombu picks for each priority with tasklane's transport options (sep ":").
KOMBU_LISTS = ["light"] * 3 + ["light:3"] * 3 + ["light:6"] * 3 + ["light:9"]


@pytest.mark.parametrize("priority", range(10))
@pytest.mark.parametrize("countdown", [None, 30])
def test_a_prioritised_message_is_send_task_s_on_the_same_sub_list(
    app: Celery, client: redis.Redis, priority: int, countdown: float | None
) -> None:
    record = make_record([1, "two"], {"three": 3})

    push = WireFormat(app).push(record, "light", countdown, priority)
    key, theirs = sent_with_list(app, client, record, "light", countdown, priority=priority)

    assert push is not None
    assert push.key == key == KOMBU_LISTS[priority]
    ours = json.loads(push.payload)
    assert comparable(ours) == comparable(theirs)
    assert ours["properties"]["priority"] == priority


@pytest.mark.parametrize(
    "change", [{"task_default_priority": 7}, {"task_inherit_parent_priority": True}]
)
def test_celery_s_default_priorities_do_not_change_send_task_s_message(
    app: Celery, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    # tasklane always passes the priority: a default or an inherited one (Celery's setdefault)
    # never applies, even inside a worker task whose own message had another priority.
    parent = SimpleNamespace(
        request=SimpleNamespace(id="parent-1", root_id=None, delivery_info={"priority": 9}),
        add_trail=lambda result: None,
    )
    monkeypatch.setattr(type(app), "current_worker_task", property(lambda self: parent))
    app.conf.update(change)
    record = make_record([1], {})

    assert wire_problem(app, app.conf.broker_url) is None
    push = WireFormat(app).push(record, "light", None, 2)
    key, theirs = sent_with_list(app, client, record, "light", None, priority=2)

    assert push is not None
    assert push.key == key == "light"
    assert comparable(json.loads(push.payload)) == comparable(theirs)


def _secret(password: str, token: str = "", *rest: str, **more: str) -> None:
    """A task signature for the redaction cases below."""


R = REDACTED


@pytest.mark.parametrize(
    ("sensitive", "args", "kwargs"),
    [
        (True, [R, R, R], {"extra": R, "token": R}),
        (("password", "more"), [R, "tok-2", "r-3"], {"extra": R, "token": "tok-5"}),
        (("token", "rest"), ["pw-1", R, R], {"extra": "more-4", "token": R}),
    ],
)
def test_a_sensitive_message_is_send_task_s_with_the_same_redacted_reprs(
    app: Celery,
    client: redis.Redis,
    sensitive: bool | tuple[str, ...],
    args: list[str],
    kwargs: dict[str, str],
) -> None:
    redaction = Redaction.of(_secret, sensitive, takes_context=False)
    record = make_record(["pw-1", "tok-2", "r-3"], {"extra": "more-4", "token": "tok-5"})

    push = WireFormat(app).push(record, "light", None, 0, redaction)
    options = redacted_reprs(app, redaction, record.args, record.kwargs)
    theirs = sent_by_celery(app, client, record, "light", None, priority=0, **options)

    assert push is not None
    ours = json.loads(push.payload)
    assert comparable(ours) == comparable(theirs)
    # Celery logs the reprs; the worker still runs with the real values of the body.
    assert (ours["headers"]["argsrepr"], ours["headers"]["kwargsrepr"]) == (
        repr(args),
        repr(kwargs),
    )
    assert comparable(ours)["body"][:2] == [record.args, record.kwargs]


def test_inside_a_worker_task_the_message_links_its_parent_like_send_task(
    app: Celery, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = SimpleNamespace(
        request=SimpleNamespace(id="parent-1", root_id="root-1", delivery_info={}),
        add_trail=lambda result: None,
    )
    monkeypatch.setattr(type(app), "current_worker_task", property(lambda self: parent))
    record = make_record([1], {})

    push = WireFormat(app).push(record, "heavy", None, 0)
    theirs = sent_by_celery(app, client, record, "heavy", None, priority=0)

    assert push is not None
    ours = json.loads(push.payload)
    assert (ours["headers"]["root_id"], ours["headers"]["parent_id"]) == ("root-1", "parent-1")
    assert comparable(ours) == comparable(theirs)


def test_a_queue_the_app_does_not_declare_as_plain_direct_is_left_to_send_task(
    redis_url: str,
) -> None:
    app = create_celery_app(Settings(celery_broker_url=redis_url, redis_url=redis_url))
    app.conf.task_queues = (
        *app.conf.task_queues,
        Queue("expiring", Exchange("expiring", type="direct"), routing_key="x", expires=60),
        Queue("topical", Exchange("topical", type="topic"), routing_key="t.#"),
    )
    wire = WireFormat(app)
    record = make_record([1], {})
    try:
        assert wire.push(record, "light", None, 0) is not None
        assert wire.push(record, "undeclared", None, 0) is None
        assert wire.push(record, "expiring", None, 0) is None  # kombu would add PEXPIREs
        assert wire.push(record, "topical", None, 0) is None  # routed through a topic exchange
    finally:
        app.close()


def test_a_publish_signal_receiver_gets_send_task_instead(app: Celery) -> None:
    seen: list[str] = []

    def receiver(sender: str | None = None, **_: object) -> None:
        seen.append(str(sender))

    wire = WireFormat(app)
    signals.before_task_publish.connect(receiver, weak=False)
    try:
        assert wire.push(make_record([1], {}), "light", None, 0) is None
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert wire.push(make_record([1], {}), "light", None, 0) is not None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"broker_url": "redis://127.0.0.1:1/0"}, "not the result store's Redis"),
        ({"broker_write_url": "redis://127.0.0.1:1/0"}, "not the result store's Redis"),
        ({"broker_transport_options": {"global_keyprefix": "x:"}}, "global_keyprefix"),
        ({"task_compression": "gzip"}, "task_compression"),
        ({"task_serializer": "pickle"}, "task_serializer"),
        ({"task_protocol": 1}, "task_protocol"),
        ({"task_send_sent_event": True}, "task_send_sent_event"),
        ({"broker_transport_options": {"visibility_timeout": 60}}, "priority lists"),
        ({"broker_transport_options": {"sep": ":", "priority_steps": [0, 5]}}, "priority lists"),
    ],
)
def test_wire_problem_names_what_send_task_would_do_differently(
    app: Celery, redis_url: str, change: dict[str, Any], problem: str
) -> None:
    assert wire_problem(app, redis_url) is None
    app.conf.update(change)

    found = wire_problem(app, redis_url)

    assert found is not None
    assert problem in found


def test_wire_problem_without_a_redis_store(app: Celery) -> None:
    assert wire_problem(app, None) == "the result store is not Redis"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("redis://h:6379/0", "redis://h/0", True),
        ("redis://h:6379", "redis://h:6379/0", True),
        ("redis://:pw@h:6379/0", "redis://:pw@h:6379/0", True),
        ("redis://h:6379/1", "redis://h:6379/0", False),
        ("redis://h:6380/0", "redis://h:6379/0", False),
        ("redis://:pw@h/0", "redis://:other@h/0", False),
        ("redis://h/0", "rediss://h/0", False),
        ("unix:///run/redis.sock", "unix:///run/redis.sock", True),
        ("sentinel://h:26379/0", "sentinel://h:26379/0", False),
    ],
)
def test_same_redis(a: str, b: str, same: bool) -> None:
    assert same_redis(a, b) is same
    assert same_redis(b, a) is same


def test_the_installed_releases_are_the_tested_ones(app: Celery, redis_url: str) -> None:
    # Fails after a celery or kombu upgrade: run this file on the new pair, and add it to
    # TESTED_VERSIONS only when every comparison above passes unchanged.
    assert (wire.celery_version(), wire.kombu_version()) in wire.TESTED_VERSIONS
    assert wire_problem(app, redis_url) is None


@pytest.mark.parametrize("release", ["celery_version", "kombu_version"])
def test_an_untested_release_publishes_with_send_task_and_says_so_once(
    app: Celery,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    release: str,
) -> None:
    monkeypatch.setattr(wire, release, lambda: "99.0.0")
    executor = CeleryExecutor(app, RedisStore(redis_url), registry=TaskRegistry())
    task("wire_probe", target=executor.registry)(lambda *args, **kwargs: None)

    with caplog.at_level(logging.INFO, logger="tasklane.celery"):
        pushes = [executor.plan(probe_call(executor)).message for _ in range(3)]

    assert pushes == [None, None, None]
    problem = wire_problem(app, redis_url)
    assert problem is not None
    assert "99.0.0" in problem
    assert "tested versions" in problem
    logged = [r.getMessage() for r in caplog.records if "send_task" in r.getMessage()]
    assert logged == [f"tasks are published with send_task, not with their records: {problem}"]


def test_a_tested_release_publishes_with_the_record(app: Celery, redis_url: str) -> None:
    executor = CeleryExecutor(app, RedisStore(redis_url), registry=TaskRegistry())
    task("wire_probe", target=executor.registry)(lambda *args, **kwargs: None)

    route = executor.plan(probe_call(executor))

    assert route.message is not None
    assert route.priority == 4  # no priority anywhere: the middle level, in Q:3 on Redis
    assert route.message.key == "light:3"


@pytest.mark.parametrize(
    ("declared", "chosen", "priority", "key"),
    [(1, None, 1, "light"), (1, 9, 9, "light:9"), (7, 0, 0, "light"), (7, None, 7, "light:6")],
)
def test_the_plan_carries_the_call_s_priority_else_the_spec_s(
    app: Celery, redis_url: str, declared: int, chosen: int | None, priority: int, key: str
) -> None:
    executor = CeleryExecutor(app, RedisStore(redis_url), registry=TaskRegistry())
    task("wire_probe", priority=declared, target=executor.registry)(lambda *a, **k: None)
    spec = executor.registry.get("wire_probe")

    route = executor.plan(Submission("wire-1", spec, [1], {}, SubmitOptions(priority=chosen)))

    assert route.priority == priority
    assert route.message is not None
    assert route.message.key == key
    assert json.loads(route.message.payload)["properties"]["priority"] == priority
