"""What kombu's Redis transport does to put one unacknowledged message back (restore_by_tag),
as recovery.py needs it outside a kombu channel: where the message goes and what it says.

kombu keeps the message in the `unacked` hash as JSON [message, exchange, routing key]. Its
restore flags the message `redelivered` (headers and delivery_info), finds the queue (the
routing key for the anonymous exchange, else the queues bound to the exchange under that key:
tasklane's queues are direct), picks the list for the message's priority (the base list for the
lowest step, `queue{sep}{step}` otherwise) and RPUSHes it: the end BRPOP takes next, so a
restored message runs before newer ones. A contract test (tests/integration/
test_dead_worker_recovery.py) compares the result with kombu's own restore_by_tag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kombu.utils.json import dumps

from app.core.tasks.broker_layout import BrokerLayout

#: kombu's Redis transport keys (kombu.transport.redis.Channel).
UNACKED, UNACKED_INDEX, BINDING_PREFIX = "unacked", "unacked_index", "_kombu.binding."


@dataclass(frozen=True, slots=True, kw_only=True)
class Redelivery:
    """One unacknowledged message on its way back."""

    tag: str
    #: kombu's `unacked` entry as read ('' when it is gone: only the holder entry is dropped).
    entry: str = ""
    exchange: str = ""
    routing_key: str = ""
    #: The message as it goes back (flagged redelivered).
    payload: str = ""
    #: Its list ('' until resolve() found it).
    destination: str = ""


def parse(tag: str, entry: str | None) -> Redelivery | None:
    """The redelivery of kombu's `unacked` entry (None when it cannot be read)."""
    if entry is None:
        return Redelivery(tag=tag)
    try:
        message, exchange, routing_key = json.loads(entry)
    except (ValueError, TypeError):
        return None
    if not isinstance(message, dict):
        return None
    # As kombu's _do_restore_message marks a restored message.
    headers, properties = message.get("headers"), message.get("properties")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    if isinstance(properties, dict) and isinstance(properties.get("delivery_info"), dict):
        properties["delivery_info"]["redelivered"] = True
    return Redelivery(
        tag=tag,
        entry=entry,
        exchange=exchange or "",
        routing_key=routing_key or "",
        payload=dumps(message),
    )


def resolve(
    redelivery: Redelivery, layout: BrokerLayout, bindings: Mapping[str, set[str]]
) -> Redelivery | None:
    """The redelivery with its destination list (None: no queue is bound for it).
    `bindings`: exchange -> members of its binding set, for every named exchange."""
    if not redelivery.entry:
        return redelivery
    if redelivery.exchange:
        members = bindings.get(redelivery.exchange, set())
        queue = layout.bound_queue(members, redelivery.routing_key)
    else:
        queue = redelivery.routing_key
    if not queue:
        return None
    destination = layout.queue_list(queue, _priority(json.loads(redelivery.payload)))
    return replace(redelivery, destination=destination)


def _priority(message: Mapping[str, Any]) -> int:
    """kombu's _get_message_priority: properties.priority clamped to 0..9, else 0."""
    try:
        return max(min(int(message["properties"]["priority"]), 9), 0)
    except (TypeError, ValueError, KeyError):
        return 0
