"""Celery task messages built by tasklane, so they reach Redis in their record's own step.

CeleryExecutor otherwise publishes with celery_app.send_task on a publisher thread: a second
round trip after the record's, plus ~130 µs of Celery and kombu code per message (profiled for
issue 6). When the broker is the store's own Redis, the manager instead hands the store the
finished message, and the store pushes it in the script that creates the PENDING record
(store/redis.py): one round trip, record and message visible together, and no message at all
for an id that already exists.

The message is the one send_task(name, args, kwargs, queue=Q, task_id=id, countdown=c,
priority=p) leaves in Redis through kombu's Redis transport:
  - Celery's own as_task_v2() builds the protocol-2 headers, properties and body (eta from the
    countdown, root_id/parent_id from a worker task we may be running inside, reply_to);
  - then kombu's producer and virtual-transport steps for the anonymous direct exchange that
    send_task uses for a direct queue: the body serialized as JSON then base64-encoded,
    delivery_mode from the queue's exchange, priority p, delivery_info {exchange: "",
    routing_key: Q}, a fresh delivery_tag;
  - LPUSH onto the list kombu picks for p: Q itself for p in 0-2, else the priority sub-list
    Q:3, Q:6 or Q:9 (BROKER_LAYOUT, the layout celery_config hands kombu).
tasklane always passes p, so Celery's task_default_priority (a default) and
task_inherit_parent_priority (a setdefault) never change what send_task writes.
As send_task does for a task the api's Celery app has not bound, time limits and ignore_result
are left to the worker's own task; inside a worker task, the parent's result trail (read only
by Celery's result backend) is not extended. tests/unit/test_celery_wire.py compares the result with
send_task's message field by field; tests/integration/test_pipeline_publish.py runs such
messages on real workers.

A sensitive task's message carries its real arguments (the worker runs with them) but
argsrepr/kwargsrepr written from the redacted values (redacted_reprs(), which send_task and the
legacy .delay() path are given too): Celery's worker logs those reprs, never the arguments.

wire_problem() and WireFormat.push() refuse whatever would make the two differ (a publish signal
receiver, a key prefix, compression, a queue that is not a plain direct one...): CeleryExecutor
then keeps publishing with send_task. The same goes for a celery or kombu release the contract
test has not run on (TESTED_VERSIONS): the message format is theirs to change in any release.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import celery
import kombu
from celery import signals
from celery.utils.saferepr import saferepr
from kombu.entity import maybe_delivery_mode
from kombu.utils.json import dumps as kombu_dumps

from app.config import REDIS_SCHEMES
from app.core.tasks.broker_layout import BROKER_LAYOUT, BrokerLayout
from app.core.tasks.store import QueuePush

if TYPE_CHECKING:
    from celery import Celery

    from app.core.tasks.executors.base import Submission
    from app.core.tasks.models import TaskResult
    from app.core.tasks.redaction import Redaction

#: (celery, kombu) releases tests/unit/test_celery_wire.py has compared this module's messages
#: with send_task's on. Any other pair publishes with send_task. To add one: install it, run
#: that test file, and add the pair only when it passes unchanged.
TESTED_VERSIONS = frozenset({("5.7.0", "5.7.0")})


def same_redis(a: str, b: str) -> bool:
    """Do two Redis URLs name the same server, database and credentials?"""
    first, second = urlsplit(a), urlsplit(b)

    def identity(url: Any) -> tuple[object, ...]:
        database = url.path.strip("/") or "0"
        return (url.scheme, url.hostname, url.port or 6379, database, url.username, url.password)

    if first.scheme not in REDIS_SCHEMES or second.scheme not in REDIS_SCHEMES:
        return False
    if first.scheme == "unix" or second.scheme == "unix":
        return a == b
    return identity(first) == identity(second) and first.query == second.query


def wire_problem(celery_app: Celery, push_url: str | None) -> str | None:
    """Why tasks cannot be pushed with their records onto the Redis at push_url, the store's
    (None: they can)."""
    conf = celery_app.conf
    broker = conf.broker_write_url or conf.broker_url  # where send_task's producers connect
    if push_url is None:
        return "the result store is not Redis"
    versions = (celery_version(), kombu_version())
    if versions not in TESTED_VERSIONS:
        return "celery {} / kombu {} are not among the wire contract's tested versions".format(
            *versions
        )
    if not isinstance(broker, str) or not same_redis(broker, push_url):
        return "the broker is not the result store's Redis"
    if (conf.broker_transport_options or {}).get("global_keyprefix"):
        return "broker_transport_options sets global_keyprefix"
    if conf.task_protocol != 2:
        return f"task_protocol is {conf.task_protocol}, not 2"
    if conf.task_serializer != "json":
        return f"task_serializer is {conf.task_serializer!r}, not 'json'"
    if conf.task_compression:
        return "task_compression is set"
    if conf.task_send_sent_event:
        return "task_send_sent_event is on"
    layout = BrokerLayout.from_transport_options(conf.broker_transport_options or {})
    if layout != BROKER_LAYOUT:
        return "broker_transport_options name other priority lists than tasklane's (sep, steps)"
    return None


def celery_version() -> str:
    """The installed celery release (the one whose message format WireFormat copies)."""
    return celery.__version__


def kombu_version() -> str:
    """The installed kombu release (the one whose Redis envelope WireFormat copies)."""
    return kombu.__version__


class WireFormat:
    """Encodes tasks as send_task would publish them (see module); one per CeleryExecutor."""

    def __init__(self, celery_app: Celery) -> None:
        self.celery_app = celery_app
        self._amqp = celery_app.amqp
        # Read once: a lookup in Celery's layered configuration costs more than the repr.
        self._maxlevels: int = celery_app.conf.task_repr_maxlevels
        # queue name -> its delivery mode, or None when only send_task may publish to it.
        self._queues: dict[str, int | None] = {}

    def push(
        self,
        record: TaskResult | Submission,
        queue: str,
        countdown: float | None,
        priority: int,
        redaction: Redaction | None = None,
    ) -> QueuePush | None:
        """The message for the record's task on `queue` at `priority`, its reprs redacted by
        `redaction`; None when send_task must publish it (a receiver of Celery's publish
        signals, or a queue that is not a plain direct one)."""
        if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
            return None  # they may read or edit the message: only send_task calls them
        delivery_mode = self._delivery_mode(queue)
        if delivery_mode is None:
            return None
        app, amqp = self.celery_app, self._amqp
        root_id = parent_id = None
        parent = app.current_worker_task
        if parent is not None:  # what send_task links when a task submits another
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        args, kwargs = record.args, record.kwargs
        if redaction is not None:
            args, kwargs = redaction.args(args), redaction.kwargs(kwargs)
        argsrepr, kwargsrepr = argument_reprs(
            args, kwargs, amqp.argsrepr_maxsize, amqp.kwargsrepr_maxsize, self._maxlevels
        )
        headers, properties, body, _ = amqp.as_task_v2(
            record.task_id,
            record.name,
            record.args,
            record.kwargs,
            countdown=countdown,
            reply_to=app.thread_oid,
            root_id=root_id,
            parent_id=parent_id,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            ignore_result=None,  # send_task's "not set": the worker's task decides
        )
        properties.update(
            delivery_mode=delivery_mode,
            delivery_info={"exchange": "", "routing_key": queue},
            priority=priority,
            body_encoding="base64",
            delivery_tag=str(uuid.uuid4()),
        )
        if redaction is not None:
            # send_task hands its argsrepr/kwargsrepr options on to kombu's publish as well,
            # which keeps them as message properties (redacted text, so nothing leaks there).
            properties.update(argsrepr=argsrepr, kwargsrepr=kwargsrepr)
        message = {
            "body": base64.b64encode(_dumps(body).encode("utf-8")).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
        return QueuePush(key=BROKER_LAYOUT.queue_list(queue, priority), payload=_dumps(message))

    def _delivery_mode(self, queue: str) -> int | None:
        if queue not in self._queues:
            self._queues[queue] = self._plain_direct_queue(queue)
        return self._queues[queue]

    def _plain_direct_queue(self, name: str) -> int | None:
        """The delivery mode send_task would use for queue `name`, if it is one of the app's
        queues with a direct exchange and no expiry (kombu would add PEXPIREs); else None."""
        queues = self._amqp.queues
        if name not in queues:  # `in`, not [name]: Queues creates missing ones on lookup
            return None
        queue = queues[name]
        if queue.exchange is None or queue.exchange.type != "direct":
            return None
        if queue.expires is not None or queue.message_ttl is not None:
            return None
        default = self.celery_app.conf.task_default_delivery_mode
        return int(maybe_delivery_mode(queue.exchange.delivery_mode or default))


def argument_reprs(
    args: list[Any], kwargs: dict[str, Any], argsize: int, kwargsize: int, maxlevels: int
) -> tuple[str, str]:
    """argsrepr and kwargsrepr as Celery's as_task_v2 writes them for these values."""
    # Celery reprs no arguments as a tuple, "()".
    argsrepr = _short_repr(args, argsize, maxlevels) if args else "()"
    return argsrepr, _short_repr(kwargs, kwargsize, maxlevels)


def redacted_reprs(
    celery_app: Celery, redaction: Redaction | None, args: list[Any], kwargs: dict[str, Any]
) -> dict[str, str]:
    """send_task/apply_async options that make Celery log a sensitive task's arguments
    redacted ({} when the task hides nothing: Celery then writes its own reprs)."""
    if redaction is None:
        return {}
    amqp = celery_app.amqp
    argsrepr, kwargsrepr = argument_reprs(
        redaction.args(list(args)),
        redaction.kwargs(dict(kwargs)),
        amqp.argsrepr_maxsize,
        amqp.kwargsrepr_maxsize,
        celery_app.conf.task_repr_maxlevels,
    )
    return {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}


def _dumps(value: object) -> str:
    """JSON as kombu writes it. The stdlib's default encoder first: kombu's own (which also
    knows datetimes, UUIDs, decimals) builds an encoder per call, and these messages hold
    plain JSON values unless a later Celery adds something else to its headers."""
    try:
        return json.dumps(value)
    except TypeError:
        return kombu_dumps(value)


def _short_repr(value: list[Any] | dict[str, Any], maxsize: int, maxlevels: int) -> str:
    """saferepr(value) as Celery writes argsrepr, via plain repr() when that is the same text
    (plain values, short and shallow: the common case, and ~5x cheaper)."""
    if _plain(value, 1, maxlevels):
        text = repr(value)
        if len(text) <= maxsize:
            return text
    return saferepr(value, maxsize, maxlevels=maxlevels)


def _plain(value: object, level: int, maxlevels: int) -> bool:
    """Do repr() and saferepr() write this JSON value the same way? Only when no container
    nests deeper than maxlevels (saferepr elides it) and no string needs escaping (saferepr
    quotes every string with ' and escapes nothing but that quote)."""
    kind = type(value)  # exact types: JSON-decoded values are never subclasses
    if kind is str:
        return _plain_text(value)  # type: ignore[arg-type]
    if kind is list or kind is dict:
        if maxlevels and level > maxlevels:
            return False
        if kind is list:
            return all(_plain(item, level + 1, maxlevels) for item in value)  # type: ignore[attr-defined]
        return all(
            type(key) is str and _plain_text(key) and _plain(item, level + 1, maxlevels)
            for key, item in value.items()  # type: ignore[attr-defined]
        )
    return value is None or kind is bool or kind is int or kind is float


def _plain_text(text: str) -> bool:
    return text.isprintable() and "'" not in text and '"' not in text and "\\" not in text
