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
from bisect import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kombu.utils.json import dumps

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: kombu's Redis transport keys and defaults (kombu.transport.redis.Channel).
UNACKED, UNACKED_INDEX, BINDING_PREFIX = "unacked", "unacked_index", "_kombu.binding."
KOMBU_SEP, KOMBU_PRIORITY_STEPS = "\x06\x16", (0, 3, 6, 9)


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerLayout:
    """Where kombu's Redis transport keeps a queue's messages (its sep and priority steps)."""

    sep: str = KOMBU_SEP
    priority_steps: tuple[int, ...] = KOMBU_PRIORITY_STEPS

    @classmethod
    def from_transport_options(cls, options: Mapping[str, Any]) -> BrokerLayout:
        return cls(
            sep=options.get("sep", KOMBU_SEP),
            priority_steps=tuple(options.get("priority_steps", KOMBU_PRIORITY_STEPS)),
        )

    def queue_list(self, queue: str, priority: int) -> str:
        """kombu's Channel._q_for_pri."""
        step = self.priority_steps[bisect(self.priority_steps, priority) - 1]
        return f"{queue}{self.sep}{step}" if step else queue

    def queue_lists(self, queue: str) -> list[str]:
        """Every list of `queue`, one per priority step (the base list holds the lowest)."""
        return [self.queue_list(queue, step) for step in self.priority_steps]

    async def waiting(
        self, client: aioredis.Redis, queues: Sequence[str]
    ) -> dict[str, dict[int, int]]:
        """Messages waiting in each queue, per priority step (one pipelined read)."""
        async with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for name in self.queue_lists(queue):
                    pipe.llen(name)
            counts = iter(await pipe.execute())
        return {
            queue: {step: int(next(counts)) for step in self.priority_steps} for queue in queues
        }

    def bound_queue(self, members: set[str], routing_key: str) -> str | None:
        """The queue a direct exchange's bindings (`_kombu.binding.{exchange}` members,
        `routing_key{sep}pattern{sep}queue`) route `routing_key` to."""
        for member in sorted(members):
            parts = member.split(self.sep)
            if len(parts) == 3 and parts[0] == routing_key:
                return parts[2]
        return None


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
