"""Where kombu's Redis transport keeps a queue's messages, and the one reading of its backlog.

kombu emulates priorities on Redis with one list per priority step: a message of priority p goes
to the list of the highest step <= p, the base list Q for the lowest step, `Q{sep}{step}` for the
others, and a consumer pops them lowest step first (DESIGN.md §3). tasklane configures a
printable separator and the steps once (BROKER_LAYOUT.transport_options(), handed to Celery by
app.workers.celery_config for the api's publisher and the workers alike), so a queue Q holds its
messages in Q (priorities 0-2), Q:3 (3-5), Q:6 (6-8) and Q:9 (9). Every reader of queue lengths
(the worker monitor, hence tasklane_queue_length and the hybrid routing; tasklane status; the
benchmarks) counts all of them through count_lists() and backlog(); the chart's KEDA triggers
name the same lists (its `tasklane.priorityLists` helper; tests/chart/test_keda.py checks that
the two agree).
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis import Redis as SyncRedis
    from redis.asyncio import Redis as AsyncRedis

#: kombu's own defaults (kombu.transport.redis.Channel), used when transport options say nothing.
KOMBU_SEP, KOMBU_PRIORITY_STEPS = "\x06\x16", (0, 3, 6, 9)


class _Pipeline(Protocol):
    """The part of a redis-py pipeline (sync or asyncio) count_lists() uses."""

    def llen(self, name: str) -> Any: ...


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

    def transport_options(self) -> dict[str, Any]:
        """The broker_transport_options that make kombu use this layout and pop the lowest
        step of every consumed queue before any higher one."""
        return {
            "sep": self.sep,
            "priority_steps": list(self.priority_steps),
            "queue_order_strategy": "priority",
        }

    def queue_list(self, queue: str, priority: int) -> str:
        """The list a message of this priority waits in (kombu's Channel._q_for_pri)."""
        step = self.priority_steps[bisect(self.priority_steps, priority) - 1]
        return f"{queue}{self.sep}{step}" if step else queue

    def queue_lists(self, queue: str) -> list[str]:
        """Every list of `queue`, one per priority step (the base list holds the lowest)."""
        return [self.queue_list(queue, step) for step in self.priority_steps]

    def count_lists(self, pipe: _Pipeline, queues: Iterable[str]) -> None:
        """Queue one LLEN per list of each queue on `pipe` (a sync or asyncio pipeline); hand
        the replies, in order, to backlog()."""
        for queue in queues:
            for name in self.queue_lists(queue):
                pipe.llen(name)

    def backlog(self, queues: Sequence[str], replies: Sequence[Any]) -> dict[str, dict[int, int]]:
        """{queue: {priority step: messages waiting}} from count_lists()'s replies."""
        counts = iter(replies)
        steps = self.priority_steps
        return {queue: {step: int(next(counts)) for step in steps} for queue in queues}

    async def read_backlog(
        self, client: AsyncRedis, queues: Sequence[str]
    ) -> dict[str, dict[int, int]]:
        """backlog() of `queues`, read in one round trip (the monitor, `tasklane status`)."""
        async with client.pipeline(transaction=False) as pipe:
            self.count_lists(pipe, queues)
            return self.backlog(queues, await pipe.execute())

    def waiting(self, client: SyncRedis, queue: str) -> int:
        """Messages waiting in every list of `queue`, in one round trip (scripts, tests)."""
        with client.pipeline(transaction=False) as pipe:
            self.count_lists(pipe, [queue])
            return sum(self.backlog([queue], pipe.execute())[queue].values())

    def bound_queue(self, members: set[str], routing_key: str) -> str | None:
        """The queue a direct exchange's bindings (`_kombu.binding.{exchange}` members,
        `routing_key{sep}pattern{sep}queue`) route `routing_key` to."""
        for member in sorted(members):
            parts = member.split(self.sep)
            if len(parts) == 3 and parts[0] == routing_key:
                return parts[2]
        return None


#: tasklane's layout: kombu's steps with a printable separator, so the lists read `heavy:3`
#: in KEDA triggers, `tasklane status` and redis-cli instead of `heavy\x06\x163`.
BROKER_LAYOUT = BrokerLayout(sep=":", priority_steps=KOMBU_PRIORITY_STEPS)
