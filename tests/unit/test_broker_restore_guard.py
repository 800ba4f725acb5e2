"""Contract (app.workers.broker) against the real kombu and Celery and a real redis-server:
the race that killed busy workers on a Redis restart, driven deterministically.

The state: a channel holding an unacknowledged message (a task running, acks_late) with a
BRPOP in flight (a free pool slot), and Celery's control channel (a pidbox Node listening on
its fanout queue), as in a worker. Redis stops; Celery's own
`Consumer.on_connection_error_after_connected` then runs on that connection (a stand-in for
the rest of the consumer: only the attributes that method reads).

- kombu's stock Redis transport fails there with the AttributeError that ended the workers
  (when this pin fails, kombu or Celery changed that path: if kombu fixed it, drop
  app.workers.broker and this pin; else re-check what the guard relies on);
- the guarded transport survives it, the message stays in kombu's unacked hash across the
  restart (never lost), the running task's ack removes it (never run twice), and without an
  ack the visibility-timeout sweep puts it back on its queue exactly once.
"""

from __future__ import annotations

import contextlib
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from kombu import Connection, Message
from kombu.transport import redis as kombu_redis

from app.config import Settings
from app.workers import broker
from app.workers.celery_config import (
    TasklaneCelery,
    broker_transport,
    create_celery_app,
)
from scripts.harness.processes import RedisServer

QUEUE = "heavy"
#: Short, so the sweep's redelivery is observable; kombu's sweep restores what is older.
VISIBILITY = 1


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own: it is stopped and started again."""
    own = RedisServer()
    own.start()
    yield own
    own.cleanup()


@dataclass
class Held:
    """A worker's broker connection at the moment of the race."""

    app: TasklaneCelery
    connection: Connection
    message: Message


def hold_one_message(url: str, transport: type | None) -> Held:
    """Consume one task message without acknowledging it, then leave a BRPOP in flight."""
    app = create_celery_app(Settings(celery_broker_url=url))
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "visibility_timeout": VISIBILITY,
    }
    connection = app.connection_for_read(transport=transport)
    delivered: list[Message] = []
    queue = next(q for q in app.conf.task_queues if q.name == QUEUE)
    consumer = app.amqp.TaskConsumer(
        connection, queues=[queue], callbacks=[lambda _body, message: delivered.append(message)]
    )
    consumer.qos(prefetch_count=2)  # concurrency 2: one slot busy, one free
    consumer.consume()
    # Celery's remote-control channel: a fanout queue, deleted when its channel closes.
    node = app.control.mailbox.Node("worker@race", channel=connection.channel())
    node.listen(callback=lambda *_: None)
    with app.producer_or_acquire() as producer:
        producer.publish({"task": "x"}, routing_key=QUEUE, exchange=queue.exchange)
    deadline = time.monotonic() + 10
    while not delivered:
        assert time.monotonic() < deadline, "the message was never delivered"
        connection.drain_events(timeout=1)
    channel = delivered[0].channel
    while channel._in_poll is None:  # the free slot asks for the next message: BRPOP sent
        assert time.monotonic() < deadline, "no BRPOP was sent"
        with contextlib.suppress(socket.timeout):
            connection.drain_events(timeout=0.2)
    assert channel._in_poll is not None, "precondition: a BRPOP in flight"
    assert len(channel.qos._delivered) == 1, "precondition: one unacknowledged message"
    return Held(app=app, connection=connection, message=delivered[0])


def celery_handles_the_connection_loss(held: Held) -> None:
    """What a worker's consumer runs when its event loop sees the broker gone."""
    consumer = SimpleNamespace(
        connection=held.connection,
        app=held.app,
        qos_global=False,
        max_prefetch_count=2,
        prefetch_multiplier=1,
    )
    with warnings.catch_warnings():  # Celery's notice that 6.0 cancels tasks on a loss
        warnings.simplefilter("ignore", CPendingDeprecationWarning)
        CeleryConsumer.on_connection_error_after_connected(
            consumer, ConnectionError("Connection closed by server.")
        )


def test_kombu_stock_redis_channel_still_fails_restoring_after_the_detach(
    server: RedisServer,
) -> None:
    held = hold_one_message(server.url, kombu_redis.Transport)
    server.stop()
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'hostname'"):
        celery_handles_the_connection_loss(held)


def test_guarded_channel_survives_and_the_running_task_acks_its_message(
    server: RedisServer,
) -> None:
    held = hold_one_message(server.url, broker.Transport)
    assert type(held.connection.transport) is broker.Transport
    server.stop(keep_data=True)
    celery_handles_the_connection_loss(held)  # no exception: the consumer reconnects

    server.start()
    redis = server.client()
    # Not lost: still recorded as delivered-unacknowledged, not pushed back while Redis was down.
    assert (redis.hlen("unacked"), redis.llen(QUEUE)) == (1, 0)
    held.message.ack()  # the task finishes on the old channel, which can reach Redis again
    assert (redis.hlen("unacked"), redis.zcard("unacked_index"), redis.llen(QUEUE)) == (0, 0, 0)


def test_guarded_channel_leaves_an_unacked_message_to_the_visibility_sweep(
    server: RedisServer,
) -> None:
    held = hold_one_message(server.url, broker.Transport)
    server.stop(keep_data=True)
    celery_handles_the_connection_loss(held)
    server.start()

    time.sleep(VISIBILITY + 0.5)
    # Another worker's periodic sweep (kombu's restore_visible) finds the message overdue.
    sweeper = held.app.connection_for_read()  # same transport options: the same timeout
    try:
        sweeper.default_channel.qos.restore_visible(num=10, interval=1)
        sweeper.default_channel.qos.restore_visible(num=10, interval=1)
    finally:
        sweeper.close()
    redis = server.client()
    assert (redis.hlen("unacked"), redis.llen(QUEUE)) == (0, 1)


def test_guarded_channel_builds_the_same_pools_as_kombu_while_attached(
    server: RedisServer,
) -> None:
    """The guard only answers from memory once detached; attached, kombu's own parameters."""
    connection = Connection(server.url, transport=broker.Transport)
    try:
        channel = connection.default_channel
        for asynchronous in (False, True):
            ours = channel._connparams(asynchronous=asynchronous)
            theirs = kombu_redis.Channel._connparams(channel, asynchronous=asynchronous)
            ours.pop("connection_class"), theirs.pop("connection_class")  # a class per call
            assert ours == theirs
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://redis:6379/0", broker.TRANSPORT_PATH),
        ("rediss://redis:6380/0", None),
        ("redis+socket:///run/redis.sock", None),
        (None, None),
    ],
)
def test_only_plain_redis_broker_urls_get_the_guarded_transport(
    url: str | None, expected: str | None
) -> None:
    assert broker_transport(url) == expected


def test_the_worker_app_connects_with_the_guarded_transport() -> None:
    app = create_celery_app(Settings(celery_broker_url="redis://127.0.0.1:1/0"))
    connection = app.connection_for_read()
    assert connection.transport_cls == broker.TRANSPORT_PATH
    assert type(connection.transport) is broker.Transport
    assert (connection.hostname, connection.port, connection.virtual_host) == (
        "127.0.0.1",
        1,
        "0",
    )
