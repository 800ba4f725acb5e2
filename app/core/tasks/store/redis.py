"""Redis ResultStore: records shared by api replicas and Celery workers (DESIGN.md §4 keys).

Keys, all under the configurable prefix (default "tasklane:"):
  task:{id}        string, the record as JSON, expires result_ttl after its last change
  tasks:recent     ZSET id -> submitted_at, trimmed to recent_max, feeds list()
  inflight         hash id -> runner id, unfinished tasks held by an in-process runner
  runner:{id}      string with a TTL, a live in-process runner's heartbeat
  lock:{name}      string owner with a TTL, a named lease (lock:scheduler)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from redis.exceptions import WatchError

from app.core.redis_client import LoopLocalRedis, translate_unavailable
from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.store import Mutation

log = logging.getLogger(__name__)

# Renew only our own lease: GET and PEXPIRE must be one step, or a lease that expired between
# them could be extended for its new holder.
_RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LIST_PAGE = 200


def encode(record: TaskResult) -> str:
    return json.dumps(record.to_dict(), separators=(",", ":"))


def decode(raw: str) -> TaskResult:
    return TaskResult.from_dict(json.loads(raw))


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tasklane:",
        result_ttl: int = 86_400,
        recent_max: int = 10_000,
    ) -> None:
        self.prefix = prefix
        self._redis = LoopLocalRedis(url)
        self._ttl = result_ttl
        self._recent_max = recent_max
        self._recent = f"{prefix}tasks:recent"
        self._inflight = f"{prefix}inflight"

    def key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    async def create(self, record: TaskResult) -> tuple[TaskResult, bool]:
        client = self._redis.client()
        async with translate_unavailable("creating a task record"):
            key = self.key(record.task_id)
            created = await client.set(key, encode(record), nx=True, ex=self._ttl)
            if not created:
                raw = await client.get(self.key(record.task_id))
                if raw is not None:
                    return decode(raw), False
                # Expired between SET NX and GET: store ours after all.
                await client.set(self.key(record.task_id), encode(record), ex=self._ttl)
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(self._recent, {record.task_id: record.submitted_at.timestamp()})
                pipe.zremrangebyrank(self._recent, 0, -(self._recent_max + 1))
                await pipe.execute()
        return record, True

    async def get(self, task_id: str) -> TaskResult | None:
        async with translate_unavailable("reading a task record"):
            raw = await self._redis.client().get(self.key(task_id))
        return self._decode_or_none(task_id, raw)

    async def update(self, task_id: str, mutate: Mutation) -> TaskResult | None:
        key = self.key(task_id)
        async with (
            translate_unavailable("updating a task record"),
            self._redis.client().pipeline(transaction=True) as pipe,
        ):
            while True:
                try:
                    await pipe.watch(key)
                    current = self._decode_or_none(task_id, await pipe.get(key))
                    new = mutate(current) if current is not None else None
                    if new is None:
                        await pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.set(key, encode(new), ex=self._ttl)
                    await pipe.execute()
                    return new
                except WatchError:
                    continue  # someone else changed it between WATCH and EXEC: re-read

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> list[TaskResult]:
        client = self._redis.client()
        found: list[TaskResult] = []
        async with translate_unavailable("listing task records"):
            start = 0
            while start < self._recent_max:
                ids = await client.zrevrange(self._recent, start, start + _LIST_PAGE - 1)
                if not ids:
                    break
                raws = await client.mget([self.key(task_id) for task_id in ids])
                expired = [task_id for task_id, raw in zip(ids, raws, strict=True) if raw is None]
                if expired:
                    await client.zrem(self._recent, *expired)
                # The removed ids no longer take ranks: the next page starts after the kept ones.
                start += len(ids) - len(expired)
                for task_id, raw in zip(ids, raws, strict=True):
                    record = self._decode_or_none(task_id, raw)
                    if record is None:
                        continue
                    if status is not None and record.status != status:
                        continue
                    if name is not None and record.name != name:
                        continue
                    found.append(record)
                    if len(found) >= limit:
                        return found
        return found

    async def claim(self, task_id: str, owner: str) -> None:
        async with translate_unavailable("claiming a task"):
            await self._redis.client().hset(self._inflight, task_id, owner)

    async def release(self, task_ids: Iterable[str]) -> None:
        ids = list(task_ids)
        if ids:
            async with translate_unavailable("releasing tasks"):
                await self._redis.client().hdel(self._inflight, *ids)

    async def claims(self) -> dict[str, str]:
        async with translate_unavailable("reading task claims"):
            return await self._redis.client().hgetall(self._inflight)

    async def heartbeat(self, owner: str, ttl: float) -> None:
        async with translate_unavailable("writing a runner heartbeat"):
            await self._redis.client().set(f"{self.prefix}runner:{owner}", "1", px=int(ttl * 1000))

    async def forget_runner(self, owner: str) -> None:
        async with translate_unavailable("removing a runner heartbeat"):
            await self._redis.client().delete(f"{self.prefix}runner:{owner}")

    async def live_runners(self, owners: Iterable[str]) -> set[str]:
        candidates = sorted(set(owners))
        if not candidates:
            return set()
        async with (
            translate_unavailable("reading runner heartbeats"),
            self._redis.client().pipeline(transaction=False) as pipe,
        ):
            for owner in candidates:
                pipe.exists(f"{self.prefix}runner:{owner}")
            alive = await pipe.execute()
        return {owner for owner, exists in zip(candidates, alive, strict=True) if exists}

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        async with translate_unavailable("taking a lease"):
            got = await self._redis.client().eval(
                _RENEW_LEASE, 1, f"{self.prefix}lock:{name}", owner, int(ttl * 1000)
            )
        return bool(got)

    async def release_lease(self, name: str, owner: str) -> None:
        async with translate_unavailable("releasing a lease"):
            await self._redis.client().eval(_RELEASE_LEASE, 1, f"{self.prefix}lock:{name}", owner)

    async def ping(self) -> None:
        async with translate_unavailable("ping"):
            await self._redis.client().ping()

    async def close(self) -> None:
        await self._redis.close()

    def _decode_or_none(self, task_id: str, raw: str | None) -> TaskResult | None:
        if raw is None:
            return None
        try:
            return decode(raw)
        except (ValueError, KeyError, TypeError):
            # A record someone wrote by hand or an older format: report, do not crash readers.
            log.error("unreadable task record", extra={"task_id": task_id})
            return None
