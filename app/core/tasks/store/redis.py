"""Redis ResultStore: records shared by api replicas and Celery workers (DESIGN.md §4 keys).

Keys, all under the configurable prefix (default "tasklane:"):
  task:{id}        string, the record as JSON, expires result_ttl after its last change
  tasks:recent     ZSET id -> submitted_at, trimmed to recent_max, feeds list()
  inflight         hash id -> runner id, unfinished tasks held by an in-process runner
  runner:{id}      string with a TTL, a live in-process runner's heartbeat
  lock:{name}      string owner with a TTL, a named lease (lock:scheduler)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING

from redis.exceptions import NoScriptError

from app.core.redis_client import UNAVAILABLE_ERRORS, LoopLocalRedis, PoolLimits
from app.core.tasks.errors import StoreUnavailable
from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.store import NO_RIDERS, KeyOp, Mutation, QueuePush, ResultStore, Riders

if TYPE_CHECKING:
    import redis.asyncio as aioredis

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

# create() and create_many() in one round trip, atomically. KEYS: the recent index, then per
# record its key and the list its message goes to (its own key again when it has none); ARGV:
# ttl, recent_max, the length of the record keys' prefix (the id follows it), then per record
# (json, score, message or ""). Each record is SET NX; only a created one joins the index
# (trimmed once) and gets its message pushed, so the message never exists without its PENDING
# record and a re-submit pushes nothing. For an id that exists, its stored JSON comes back and
# nothing is touched: a re-submit never re-adds (nor re-scores) an id, even one trimmed out of
# the index. Reply per record: 1 (created) or the existing JSON.
_CREATE = """
local ttl, keep, skip = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local replies, members, lists = {}, {}, {}
for n = 1, (#KEYS - 1) / 2 do
  local key, at = KEYS[2 * n], 3 * n + 1
  if redis.call('SET', key, ARGV[at], 'NX', 'EX', ttl) then
    members[#members + 1] = ARGV[at + 1]
    members[#members + 1] = string.sub(key, skip + 1)
    if ARGV[at + 2] ~= '' then
      local list = KEYS[2 * n + 1]
      lists[list] = lists[list] or {}
      table.insert(lists[list], ARGV[at + 2])
    end
    replies[n] = 1
  else
    replies[n] = redis.call('GET', key)
  end
end
-- One ZADD and one LPUSH per list for the whole chunk: the same writes, in the same order
-- (LPUSH a b == LPUSH a; LPUSH b), at a fraction of the per-call cost.
if #members > 0 then
  redis.call('ZADD', KEYS[1], unpack(members))
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(keep + 1))
end
for list, messages in pairs(lists) do
  redis.call('LPUSH', list, unpack(messages))
end
return replies
"""
_CREATE_SHA = hashlib.sha1(_CREATE.encode()).hexdigest()
#: Records per script call in create_many: Redis runs nothing else while a script runs (and
#: unpack() of a chunk's index members stays far below Lua's 8000-value limit).
_CREATE_CHUNK = 500


# update()'s compare-and-set, one round trip: the new JSON replaces the stored one only if the
# stored one is still, byte for byte, the JSON the caller derived it from. KEYS: the record,
# then one per rider; ARGV: expected JSON, new JSON, ttl, how many riders go before and after,
# then per rider its command, argument count and arguments. Reply: 1 (written), 0 (no record),
# else the JSON stored now, so a lost race re-derives from it without another GET. The riders
# before run first, whatever the reply; the ones after only with a reply of 1 or 0. pcall: a
# rider's own error (a key of the wrong type) never stops the record's write.
_CAS = """
local function ride(at, first, last)
  for n = first, last do
    local count = tonumber(ARGV[at + 1])
    redis.pcall(ARGV[at], KEYS[n + 1], unpack(ARGV, at + 2, at + 1 + count))
    at = at + 2 + count
  end
  return at
end
local before, after = tonumber(ARGV[4]), tonumber(ARGV[5])
local at = ride(6, 1, before)
local current = redis.call('GET', KEYS[1])
if current ~= false and current ~= ARGV[1] then return current end
if current ~= false then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
ride(at, before + 1, before + after)
return current == false and 0 or 1
"""
_CAS_SHA = hashlib.sha1(_CAS.encode()).hexdigest()


#: Records whose JSON a store remembers (see RedisStore._known): a process has few in flight.
_KNOWN_MAX = 256
#: ... and their JSON's total length: each entry holds the record and its JSON, so the cache
#: takes about twice this (a 20 MB audio record would otherwise pin 40 MB per entry).
_KNOWN_MAX_BYTES = 8 * 1_048_576
#: A record whose JSON is longer is not remembered at all: encoding it again for a CAS hint
#: costs little next to moving it to Redis, and it would crowd out every small one.
_KNOWN_ENTRY_MAX = 64 * 1024

#: One encoder for every record: json.dumps(separators=...) would build a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(record: TaskResult) -> str:
    return _ENCODER.encode(record.to_dict())


def decode(raw: str) -> TaskResult:
    return TaskResult.from_dict(json.loads(raw))


@contextlib.asynccontextmanager
async def translate_unavailable(what: str) -> AsyncIterator[None]:
    """Turn a dead or unreachable Redis into StoreUnavailable (a 503, never a 500); the domain's
    Redis data (app/tasks/data/redis.py) reports the same way."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class RedisStore(ResultStore):
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tasklane:",
        result_ttl: int = 86_400,
        recent_max: int = 10_000,
        limits: PoolLimits | None = None,
    ) -> None:
        self.prefix = prefix
        #: Where a QueuePush lands: this store's own Redis (see executors/wire.py).
        self.push_url: str | None = url
        self._redis = LoopLocalRedis(url, limits=limits)
        self._ttl = result_ttl
        self._recent_max = recent_max
        self._recent = f"{prefix}tasks:recent"
        self._inflight = f"{prefix}inflight"
        # task id -> (record, its JSON) last read or written here: an `expected` hint that *is*
        # that record (the worker passes what it just read or wrote) needs no encoding again.
        # Identity, not equality, and only ever a hint: a stale JSON just loses the CAS.
        self._known: OrderedDict[str, tuple[TaskResult, str]] = OrderedDict()
        self._known_bytes = 0  # sum of the remembered JSONs' lengths
        # Held for dict operations only, never across an await: any loop may use the store.
        self._known_lock = threading.Lock()

    @property
    def redis(self) -> LoopLocalRedis:
        """This store's client, shared with what keeps its state next to the records (the
        rate limiter, app/core/tasks/rate_limits.py)."""
        return self._redis

    def key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    async def create_many(
        self,
        records: Sequence[TaskResult],
        *,
        pushes: Sequence[QueuePush | None] | None = None,
    ) -> list[tuple[TaskResult, bool]]:
        pushes = pushes if pushes is not None else [None] * len(records)
        # An id repeated in the batch is sent once: the script would report the repeat as
        # existing anyway, but only after shipping its record (and message) for nothing.
        first: dict[str, int] = {}
        unique = [i for i, r in enumerate(records) if first.setdefault(r.task_id, i) == i]
        outcomes: dict[str, tuple[TaskResult, bool]] = {}
        client = self._redis.client()
        async with translate_unavailable("creating task records"):
            for start in range(0, len(unique), _CREATE_CHUNK):
                chunk = [(records[i], pushes[i]) for i in unique[start : start + _CREATE_CHUNK]]
                replies = await self._create_script(client, chunk)
                for (record, _), reply in zip(chunk, replies, strict=True):
                    created = reply == 1
                    outcomes[record.task_id] = (record, True) if created else (decode(reply), False)
        return [
            outcomes[r.task_id] if first[r.task_id] == i else (outcomes[r.task_id][0], False)
            for i, r in enumerate(records)
        ]

    async def _create_script(
        self, client: aioredis.Redis, chunk: Sequence[tuple[TaskResult, QueuePush | None]]
    ) -> list[int | str]:
        keys = [self._recent]
        args: list[str | int | float] = [self._ttl, self._recent_max, len(self.key(""))]
        for record, push in chunk:
            key = self.key(record.task_id)
            keys += (key, push.key if push else key)
            args += (encode(record), record.submitted_at.timestamp(), push.payload if push else "")
        try:
            return await client.evalsha(_CREATE_SHA, len(keys), *keys, *args)
        except NoScriptError:
            # First use on this server (or after a restart, SCRIPT FLUSH): EVAL caches it.
            return await client.eval(_CREATE, len(keys), *keys, *args)

    async def get(self, task_id: str) -> TaskResult | None:
        async with translate_unavailable("reading a task record"):
            raw = await self._redis.client().get(self.key(task_id))
        record = self._decode_or_none(task_id, raw)
        if record is not None and raw is not None:
            self._remember(record, raw)
        return record

    async def update(
        self,
        task_id: str,
        mutate: Mutation,
        *,
        expected: TaskResult | None = None,
        riders: Riders = NO_RIDERS,
    ) -> TaskResult | None:
        # Optimistic loop of one-round-trip compare-and-sets (_CAS) instead of WATCH/GET/MULTI:
        # with `expected` right (the worker and the runner just read or wrote the record) a
        # transition costs one round trip; without it, or with it stale, one GET more.
        key = self.key(task_id)
        client = self._redis.client()
        before = riders.before
        async with translate_unavailable("updating a task record"):
            if expected is not None:
                current, raw = expected, self._json_of(expected)
            else:
                raw = await client.get(key)
                current = self._decode_or_none(task_id, raw)
            while current is not None:
                new = mutate(current)
                if new is None:
                    break
                new_raw = encode(new)
                reply = await self._cas(client, key, raw, new_raw, before, riders.after)
                if reply == 1:
                    self._remember(new, new_raw)
                    return new
                if reply == 0:
                    return None  # the script ran the riders after
                # Someone else changed it since (or `expected` was stale): re-derive. The
                # riders before already ran; the ones after wait for the write.
                before = ()
                raw = reply
                current = self._decode_or_none(task_id, raw)
            if riders.after:
                await self._ride(client, riders.after)
        return None

    async def _cas(
        self,
        client: aioredis.Redis,
        key: str,
        expected: str,
        new: str,
        before: Sequence[KeyOp] = (),
        after: Sequence[KeyOp] = (),
    ) -> int | str:
        keys = [key]
        args: list[str | int] = [expected, new, self._ttl, len(before), len(after)]
        for op in (*before, *after):
            keys.append(op.key)
            args += (op.command, len(op.args), *op.args)
        try:
            return await client.evalsha(_CAS_SHA, len(keys), *keys, *args)
        except NoScriptError:
            # Nothing ran (riders included): EVAL runs the whole step and caches the script.
            return await client.eval(_CAS, len(keys), *keys, *args)

    async def _ride(self, client: aioredis.Redis, ops: Sequence[KeyOp]) -> None:
        """Riders on their own (update() wrote nothing): one pipelined round trip."""
        async with client.pipeline(transaction=True) as pipe:
            for op in ops:
                pipe.execute_command(op.command, op.key, *op.args)
            replies = await pipe.execute(raise_on_error=False)
        for op, reply in zip(ops, replies, strict=True):
            if isinstance(reply, Exception):
                log.warning("%s %s failed: %s", op.command, op.key, reply)

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

    def _remember(self, record: TaskResult, raw: str) -> None:
        with self._known_lock:
            old = self._known.pop(record.task_id, None)
            if old is not None:
                self._known_bytes -= len(old[1])
            if len(raw) > _KNOWN_ENTRY_MAX:
                return  # and the stale entry went: its JSON no longer matches anyway
            self._known[record.task_id] = (record, raw)
            self._known_bytes += len(raw)
            while len(self._known) > _KNOWN_MAX or self._known_bytes > _KNOWN_MAX_BYTES:
                _, (_, dropped) = self._known.popitem(last=False)
                self._known_bytes -= len(dropped)

    def _json_of(self, record: TaskResult) -> str:
        with self._known_lock:
            known = self._known.get(record.task_id)
        return known[1] if known is not None and known[0] is record else encode(record)

    def _decode_or_none(self, task_id: str, raw: str | None) -> TaskResult | None:
        if raw is None:
            return None
        try:
            return decode(raw)
        except (ValueError, KeyError, TypeError):
            # A record someone wrote by hand or an older format: report, do not crash readers.
            log.error("unreadable task record", extra={"task_id": task_id})
            return None
