"""Worker presence: which Celery workers are alive, what they consume, what they run.

One module for the whole concept (DESIGN.md §2-4): the key names, the record of a worker
(WorkerInfo), the liveness rule (LivenessRule, the only place heartbeat interval x factor is
written), the readers (the api's WorkerMonitor, `tasklane status`, the worker liveness probe)
and the writes (the heartbeat thread of a worker's main process, and, around each task in a
pool child, the active entries: as riders of the attempt's STARTED and final record writes, no
round trip of their own). No Celery here: the bootstep that runs the heartbeat is
app/workers/heartbeat.py.

Keys (prefix `tasklane:`), in the store's Redis:
  workers                  ZSET  hostname -> unix time of its last heartbeat
  worker:{host}            HASH  queues (comma-separated), concurrency, pid, version, started;
                                 TTL HASH_TTL_FACTOR heartbeat intervals
  worker:{host}:active     HASH  task id -> queue, the tasks that worker is running (so a dead
                                 worker's entries can be removed from active:{queue})
  active:{queue}           ZSET  task id -> unix time its attempt started (KEDA's "active")
and, in the broker's Redis (the same server: recovery needs both in one script), for
app/core/tasks/recovery.py:
  unacked:holders          HASH  kombu delivery tag -> hostname of the worker holding it
  worker:{host}:evicted    STRING when recovery declared that worker dead (its fence)

A worker's entries are removed by the worker itself on shutdown, and by any other worker's
heartbeat once the liveness rule declares it dead (purge_dead), so a SIGKILLed pod never leaves
phantom running tasks behind for the autoscaler to count.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

import redis
from redis.exceptions import RedisError, WatchError

from app.core.tasks.store import KeyOp, Riders

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.client import Pipeline as AsyncPipeline
    from redis.client import Pipeline

#: A worker missing this many heartbeats in a row is dead (3 x 5 s = 15 s, DESIGN.md §3).
LIVENESS_FACTOR = 3
#: Heartbeat hash lifetime in heartbeat intervals (30 s at the 5 s default).
HASH_TTL_FACTOR = 6
#: Optimistic-transaction attempts before a purge gives up until the next beat.
_WATCH_ATTEMPTS = 5


# -- key names -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerKeys:
    prefix: str = "tasklane:"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    def worker(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}"

    def worker_active(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}:active"

    def active(self, queue: str) -> str:
        return f"{self.prefix}active:{queue}"

    @property
    def unacked_holders(self) -> str:
        return f"{self.prefix}unacked:holders"

    def worker_evicted(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}:evicted"


def heartbeat_client_name(hostname: str) -> str:
    """The CLIENT SETNAME of a worker's heartbeat connection (no spaces: Redis refuses them)."""
    return "tasklane-heartbeat:" + hostname.replace(" ", "_")


# -- the record of a worker and the liveness rule ----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """One worker: what it announces with each heartbeat, and when a reader last saw it."""

    hostname: str
    queues: tuple[str, ...]
    concurrency: int
    pid: int | None = None
    version: str = "?"
    #: Unix time the worker process started: tells a restarted worker (same hostname, new pod
    #: container) from the incarnation that began an attempt.
    started: float | None = None
    #: Unix time of its last heartbeat (the ZSET score; 0 for a worker announcing itself).
    last_seen: float = 0.0
    #: Is its heartbeat connection open? None: unknown (never seen in CLIENT LIST).
    connected: bool | None = None

    def as_hash(self) -> dict[str, str]:
        return {
            "queues": ",".join(self.queues),
            "concurrency": str(self.concurrency),
            "pid": "" if self.pid is None else str(self.pid),
            "version": self.version,
            "started": "" if self.started is None else f"{self.started:.6f}",
        }

    @classmethod
    def from_hash(cls, hostname: str, score: float, fields: Mapping[str, str]) -> WorkerInfo:
        # A worker whose hash expired or is malformed still counts as live, serving no known
        # queue: its beat alone says it is alive.
        queues = tuple(q.strip() for q in fields.get("queues", "").split(",") if q.strip())
        concurrency, pid = fields.get("concurrency") or "", fields.get("pid") or ""
        return cls(
            hostname=hostname,
            queues=queues,
            concurrency=int(concurrency) if concurrency.isdigit() else 0,
            pid=int(pid) if pid.isdigit() else None,
            version=fields.get("version") or "?",
            started=_seconds(fields.get("started")),
            last_seen=float(score),
        )


def _seconds(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessRule:
    """When a worker stops counting as live, judged against the clock when asked (so a worker
    dies on time even while Redis cannot be read). Worker and reader clocks are compared, so
    hosts need NTP."""

    #: Seconds after its last heartbeat that a worker stops counting as live.
    liveness: float = 15.0
    #: Seconds after its last heartbeat that a worker whose connection closed stops counting.
    disconnect_grace: float = 6.0

    @classmethod
    def for_interval(cls, heartbeat_interval: float) -> LivenessRule:
        """The rule for workers that beat every `heartbeat_interval` s: the window is
        LIVENESS_FACTOR beats; a closed heartbeat connection counts once the beat is older
        than the next beat plus a second."""
        liveness = LIVENESS_FACTOR * heartbeat_interval
        return cls(liveness=liveness, disconnect_grace=min(heartbeat_interval + 1.0, liveness))

    def is_live(self, last_seen: float, now: float, connected: bool | None = None) -> bool:
        return last_seen > self.cutoff(connected, now)

    def cutoff(self, connected: bool | None, now: float) -> float:
        """A worker whose last beat is at or before this is dead: the heartbeat window, or
        the (shorter) grace once its heartbeat connection was seen closed."""
        if connected is False:
            return now - min(self.disconnect_grace, self.liveness)
        return now - self.liveness


# -- readers -------------------------------------------------------------------------------------


async def aread_workers(
    client: aioredis.Redis, keys: WorkerKeys, since: float = float("-inf")
) -> list[WorkerInfo]:
    """The workers whose last beat is at or after `since`: the monitor's tick reads only the
    live ones, `tasklane status` every one (it shows the dead too)."""
    scored = await client.zrangebyscore(keys.workers, since, "+inf", withscores=True)
    if not scored:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for hostname, _ in scored:
            pipe.hgetall(keys.worker(hostname))
        hashes = await pipe.execute()
    return [
        WorkerInfo.from_hash(hostname, score, fields)
        for (hostname, score), fields in zip(scored, hashes, strict=True)
    ]


async def active_counts(
    client: aioredis.Redis, keys: WorkerKeys, queues: Sequence[str]
) -> dict[str, int]:
    """queue -> how many tasks workers are running from it (the size of active:{queue})."""
    async with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zcard(keys.active(queue))
        counts = await pipe.execute()
    return {queue: int(count) for queue, count in zip(queues, counts, strict=True)}


class HeartbeatConnections:
    """Which live workers' heartbeat connections (heartbeat_client_name) are open, as CLIENT
    LIST shows them on the monitor's tick: a SIGKILLed worker's kernel closes its sockets at
    once, long before its beat goes stale, so a connection seen and now gone earns the rule's
    short grace (`connected=False`). One never seen (a proxy, CLIENT LIST refused) proves
    nothing, nor does a Redis restart, which closes them all: when the server's run_id changes,
    the connections seen before are forgotten until each is seen again."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._run_id: str | None = None

    async def annotate(self, client: aioredis.Redis, workers: list[WorkerInfo]) -> list[WorkerInfo]:
        """`workers` with `connected` set where CLIENT LIST tells."""
        if not workers:
            return workers
        await self._check_server_run(client)
        # Forget workers that left the ZSET (pods come and go under new names).
        self._seen &= {worker.hostname for worker in workers}
        try:
            clients = await client.client_list(_type="normal")
        except RedisError:
            return workers  # ACLs or a proxy may refuse it: the heartbeat window alone decides
        names = {entry.get("name", "") for entry in clients}
        return [self._connected(worker, names) for worker in workers]

    async def _check_server_run(self, client: aioredis.Redis) -> None:
        try:
            run_id = (await client.info("server")).get("run_id")
        except RedisError:
            return  # refused like CLIENT LIST: nothing to compare
        if run_id != self._run_id and self._run_id is not None:
            self._seen.clear()
        self._run_id = run_id

    def _connected(self, worker: WorkerInfo, names: set[str]) -> WorkerInfo:
        if heartbeat_client_name(worker.hostname) in names:
            self._seen.add(worker.hostname)
            return replace(worker, connected=True)
        if worker.hostname in self._seen:
            return replace(worker, connected=False)
        return worker


def last_beat(client: redis.Redis, keys: WorkerKeys, hostname: str) -> float | None:
    """Unix time of `hostname`'s last heartbeat (None: it never beat, or was purged)."""
    score = client.zscore(keys.workers, hostname)
    return None if score is None else float(score)


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

    Yes only while that worker is live (the rule for `interval`), is the same incarnation that
    started the attempt, and still lists task_id as active.
    """
    with client.pipeline(transaction=False) as pipe:
        pipe.zscore(keys.workers, hostname)
        pipe.hget(keys.worker(hostname), "started")
        pipe.hexists(keys.worker_active(hostname), task_id)
        score, started, active = pipe.execute()
    if score is None or not LivenessRule.for_interval(interval).is_live(score, time.time()):
        return False
    # A restarted worker (same hostname, later start) cannot be running an older attempt. Both
    # times come from that worker's own clock (it wrote both), so they compare.
    if started and attempt_started is not None:
        restarted = attempt_started.timestamp() < float(started)
        if restarted:
            return False
    return bool(active)


# -- writes: the heartbeat (a worker's main process) --------------------------------------------


def heartbeat_connection(url: str, hostname: str, interval: float) -> redis.Redis:
    """The heartbeat's own sync client, named so the monitor sees it close when the worker
    dies; short socket timeouts, so a beat does not hang much longer than its interval."""
    timeout = max(1.0, min(5.0, interval))
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        client_name=heartbeat_client_name(hostname),
    )


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
    """Remove the entries of every worker the rule for `interval` declares dead (by its beat
    alone); returns their hostnames."""
    cutoff = LivenessRule.for_interval(interval).cutoff(None, time.time())
    purged = []
    for hostname in client.zrangebyscore(keys.workers, "-inf", cutoff):
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
                if score is None or score > cutoff:
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


# -- writes: the tasks a worker runs (pool children) ---------------------------------------------


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
    """A running attempt's entries as riders of its STARTED and final writes
    (ResultStore.update): the entry exists before the record says STARTED, and goes with the
    write that settles it (the same removal as mark_done())."""
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
