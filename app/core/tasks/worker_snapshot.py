"""What the WorkerMonitor last read: workers as their heartbeats describe them, queue sizes,
and the liveness judgement, made against the clock when asked (monitor.py explains the rules).

Immutable, so the request path reads it without locks while the monitor replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from app.core.tasks.worker_keys import LIVENESS_FACTOR

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """One worker as its last heartbeat described it."""

    hostname: str
    queues: frozenset[str]
    concurrency: int
    #: Unix time of its last heartbeat (the ZSET score).
    last_seen: float
    #: Is its heartbeat connection open? None: unknown (never seen in CLIENT LIST).
    connected: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSnapshot:
    """What the last read of Redis found; judged against the clock by the methods below."""

    workers: tuple[WorkerInfo, ...] = ()
    #: Messages waiting per queue (base list plus priority sub-lists).
    queue_lengths: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    #: Tasks running on workers per queue (size of active:{queue}).
    active: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    #: Did the last read of the queue lists (the broker) succeed?
    broker_up: bool = False
    #: Did the last read of the worker keys succeed (else `workers` is the previous view)?
    workers_fresh: bool = False
    #: Unix time of the last read attempt (0: never tried).
    taken_at: float = 0.0
    #: Seconds after its last heartbeat that a worker stops counting as live.
    liveness: float = 15.0
    #: Seconds after its last heartbeat that a worker whose connection closed stops counting.
    disconnect_grace: float = 6.0

    @classmethod
    def rule_for(cls, heartbeat_interval: float) -> WorkerSnapshot:
        """An empty snapshot carrying the liveness rule of workers that beat every
        `heartbeat_interval` s: the window is LIVENESS_FACTOR beats; a closed heartbeat
        connection counts once the beat is older than the next beat plus a second."""
        liveness = LIVENESS_FACTOR * heartbeat_interval
        return cls(liveness=liveness, disconnect_grace=min(heartbeat_interval + 1.0, liveness))

    @property
    def healthy(self) -> bool:
        """Did the last refresh read everything?"""
        return self.broker_up and self.workers_fresh

    def live(self, now: float) -> tuple[WorkerInfo, ...]:
        return tuple(worker for worker in self.workers if self.is_live(worker, now))

    def is_live(self, worker: WorkerInfo, now: float) -> bool:
        """The liveness rule (monitor.py); recovery asks it too."""
        return worker.last_seen > self.cutoff(worker.connected, now)

    def cutoff(self, connected: bool | None, now: float) -> float:
        """A worker whose last beat is at or before this is dead: the heartbeat window, or
        the (shorter) grace once its heartbeat connection was seen closed."""
        if connected is False:
            return now - min(self.disconnect_grace, self.liveness)
        return now - self.liveness

    def live_workers(self, queue: str, now: float) -> int:
        return sum(1 for worker in self.live(now) if queue in worker.queues)

    def concurrency(self, queue: str, now: float) -> int:
        return sum(worker.concurrency for worker in self.live(now) if queue in worker.queues)

    def queues(self) -> list[str]:
        """Every queue this snapshot knows about (measured, or consumed by a worker)."""
        named = set(self.queue_lengths) | set(self.active)
        for worker in self.workers:
            named |= worker.queues
        return sorted(named)


def worker_info(hostname: str, score: float, fields: Mapping[str, str]) -> WorkerInfo:
    # A worker whose hash expired or is malformed still counts as live, serving no known queue.
    queues = frozenset(q.strip() for q in fields.get("queues", "").split(",") if q.strip())
    try:
        concurrency = max(int(fields.get("concurrency", "0")), 0)
    except ValueError:
        concurrency = 0
    return WorkerInfo(hostname=hostname, queues=queues, concurrency=concurrency, last_seen=score)
