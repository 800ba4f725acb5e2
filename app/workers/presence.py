"""Which workers are alive and what they run: the Redis keys of DESIGN.md §3-4, written with a
sync client (the heartbeat thread of a worker's main process, redelivery checks) or, around each
task in a pool child, as riders of the attempt's STARTED and final record writes
(attempt_riders: no round trip of their own). Every key name comes from WorkerKeys; the api's
WorkerMonitor reads the same keys.

  workers                  ZSET hostname -> unix time of its last heartbeat
  worker:{host}            HASH queues, concurrency, pid, version, started (TTL 6 intervals)
  worker:{host}:active     HASH task id -> queue, the tasks that worker is running
  active:{queue}           ZSET task id -> unix time its attempt started (KEDA's "active")

A worker's entries are removed by the worker itself on shutdown, and by any other worker's
heartbeat once it has missed LIVENESS_FACTOR beats (purge_dead), so a SIGKILLed pod never
leaves phantom running tasks behind for the autoscaler to count.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import redis
from redis.exceptions import WatchError

from app.core.tasks.store import KeyOp, Riders
from app.core.tasks.worker_keys import LIVENESS_FACTOR, WorkerKeys

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline as AsyncPipeline
    from redis.client import Pipeline

#: Heartbeat hash lifetime in heartbeat intervals (DESIGN.md §3: 30 s at the 5 s default).
HASH_TTL_FACTOR = 6
#: Optimistic-transaction attempts before a purge gives up until the next beat.
_WATCH_ATTEMPTS = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """What one worker announces with each heartbeat."""

    hostname: str
    queues: tuple[str, ...]
    concurrency: int
    pid: int
    version: str
    #: Unix time the worker process started: tells a restarted worker (same hostname, new pod
    #: container) from the incarnation that began an attempt.
    started: float

    def as_hash(self) -> dict[str, str]:
        return {
            "queues": ",".join(self.queues),
            "concurrency": str(self.concurrency),
            "pid": str(self.pid),
            "version": self.version,
            "started": f"{self.started:.6f}",
        }


def write_heartbeat(
    client: redis.Redis, keys: WorkerKeys, info: WorkerInfo, interval: float
) -> str | None:
    """Announce `info.hostname` as live now, with its queues and concurrency; returns (and
    clears) its fence: when recovery declared it dead meanwhile (app/core/tasks/recovery.py)."""
    ttl = max(1, round(HASH_TTL_FACTOR * interval))
    fence = keys.worker_evicted(info.hostname)
    with client.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.workers, {info.hostname: time.time()})
        pipe.hset(keys.worker(info.hostname), mapping=info.as_hash())
        pipe.expire(keys.worker(info.hostname), ttl)
        pipe.get(fence)
        pipe.delete(fence)
        evicted = pipe.execute()[3]
    return evicted


def forget_worker(client: redis.Redis, keys: WorkerKeys, hostname: str) -> None:
    """Remove every entry of `hostname`: its heartbeat, its hash, its active tasks."""
    clear_active(client, keys, hostname)
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.workers, hostname)
        pipe.delete(keys.worker(hostname))
        pipe.execute()


def clear_active(client: redis.Redis, keys: WorkerKeys, hostname: str) -> int:
    """Drop `hostname`'s active entries (a worker starting up under a name a previous
    incarnation used); returns how many there were."""
    entries: Mapping[str, str] = client.hgetall(keys.worker_active(hostname))
    with client.pipeline(transaction=True) as pipe:
        for task_id, queue in entries.items():
            pipe.zrem(keys.active(queue), task_id)
        pipe.delete(keys.worker_active(hostname))
        pipe.execute()
    return len(entries)


def purge_dead(client: redis.Redis, keys: WorkerKeys, interval: float) -> list[str]:
    """Remove the entries of every worker whose last heartbeat is older than
    LIVENESS_FACTOR intervals; returns their hostnames."""
    cutoff = time.time() - LIVENESS_FACTOR * interval
    purged = []
    for hostname in client.zrangebyscore(keys.workers, "-inf", f"({cutoff}"):
        if _purge_one(client, keys, hostname, cutoff):
            purged.append(hostname)
    return purged


def _purge_one(client: redis.Redis, keys: WorkerKeys, hostname: str, cutoff: float) -> bool:
    with client.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_ATTEMPTS):
            try:
                # Watching the worker's hash catches a worker that beats again meanwhile
                # (same hostname restarted); watching its active hash catches a takeover
                # (release_orphan) so an id re-added by the new runner is never removed.
                pipe.watch(keys.worker(hostname), keys.worker_active(hostname))
                score = pipe.zscore(keys.workers, hostname)
                if score is None or score >= cutoff:
                    pipe.unwatch()
                    return False
                entries = pipe.hgetall(keys.worker_active(hostname))
                pipe.multi()
                for task_id, queue in entries.items():
                    pipe.zrem(keys.active(queue), task_id)
                pipe.delete(keys.worker_active(hostname), keys.worker(hostname))
                pipe.zrem(keys.workers, hostname)
                pipe.execute()
                return True
            except WatchError:
                continue
    return False


def mark_active(
    client: redis.Redis, keys: WorkerKeys, hostname: str, task_id: str, queue: str
) -> None:
    """`hostname` starts running task_id from `queue`."""
    with client.pipeline(transaction=True) as pipe:
        _queue(pipe, _active_ops(keys, hostname, task_id, queue))
        pipe.execute()


def mark_done(
    client: redis.Redis, keys: WorkerKeys, hostname: str, task_id: str, queue: str
) -> None:
    """`hostname` no longer runs task_id (finished, failed, retrying or lost)."""
    with client.pipeline(transaction=True) as pipe:
        _queue(pipe, _done_ops(keys, hostname, task_id, queue))
        pipe.execute()


async def mark_done_async(
    client: aioredis.Redis, keys: WorkerKeys, hostname: str, task_id: str, queue: str
) -> None:
    """See mark_done()."""
    async with client.pipeline(transaction=True) as pipe:
        _queue(pipe, _done_ops(keys, hostname, task_id, queue))
        await pipe.execute()


def attempt_riders(keys: WorkerKeys, hostname: str, task_id: str, queue: str) -> Riders:
    """mark_active() and mark_done() as riders of the attempt's STARTED and final writes
    (ResultStore.update): the entry exists before the record says STARTED, and goes with the
    write that settles it."""
    return Riders(
        before=_active_ops(keys, hostname, task_id, queue),
        after=_done_ops(keys, hostname, task_id, queue),
    )


# The key layout of a running attempt, written once for the sync and async clients and riders.
def _active_ops(keys: WorkerKeys, hostname: str, task_id: str, queue: str) -> tuple[KeyOp, ...]:
    return (
        KeyOp("ZADD", keys.active(queue), (repr(time.time()), task_id)),
        KeyOp("HSET", keys.worker_active(hostname), (task_id, queue)),
    )


def _done_ops(keys: WorkerKeys, hostname: str, task_id: str, queue: str) -> tuple[KeyOp, ...]:
    return (
        KeyOp("ZREM", keys.active(queue), (task_id,)),
        KeyOp("HDEL", keys.worker_active(hostname), (task_id,)),
    )


def _queue(pipe: Pipeline | AsyncPipeline, ops: tuple[KeyOp, ...]) -> None:
    for op in ops:
        pipe.execute_command(op.command, op.key, *op.args)


def release_orphan(client: redis.Redis, keys: WorkerKeys, hostname: str, task_id: str) -> None:
    """Take task_id out of a dead worker's active entries before someone else runs it."""
    queue = client.hget(keys.worker_active(hostname), task_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.worker_active(hostname), task_id)
        if queue is not None:
            pipe.zrem(keys.active(queue), task_id)
        pipe.execute()


def attempt_running(
    client: redis.Redis,
    keys: WorkerKeys,
    *,
    hostname: str,
    task_id: str,
    attempt_started: datetime | None,
    interval: float,
) -> bool:
    """Is the attempt that `hostname` started at `attempt_started` still running?

    Yes only while that worker is live (a heartbeat younger than LIVENESS_FACTOR intervals),
    is the same incarnation that started the attempt, and still lists task_id as active.
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.zscore(keys.workers, hostname)
        pipe.hget(keys.worker(hostname), "started")
        pipe.hexists(keys.worker_active(hostname), task_id)
        score, started, active = pipe.execute()
    if score is None or score < time.time() - LIVENESS_FACTOR * interval:
        return False
    # A restarted worker (same hostname, later start) cannot be running an older attempt. Both
    # times come from that worker's own clock (it wrote both), so they compare.
    if started is not None and attempt_started is not None:
        restarted = attempt_started.timestamp() < float(started)
        if restarted:
            return False
    return bool(active)


def live_workers(client: redis.Redis, keys: WorkerKeys, interval: float) -> set[str]:
    """Hostnames with a heartbeat younger than LIVENESS_FACTOR intervals."""
    cutoff = time.time() - LIVENESS_FACTOR * interval
    return set(client.zrangebyscore(keys.workers, cutoff, "+inf"))


def active_ids(client: redis.Redis, keys: WorkerKeys, queues: Iterable[str]) -> dict[str, set[str]]:
    """queue -> the task ids running from it (for tests and `tasklane status`)."""
    return {queue: set(client.zrange(keys.active(queue), 0, -1)) for queue in queues}
