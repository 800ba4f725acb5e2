"""Redis DomainData: what api replicas and Celery workers share in scaled mode (DESIGN.md §4).

Keys, all under `{prefix}domain:`:
  resource:{id}              string, the resource document as JSON (without `impressions`)
  resources                  SET of every resource id
  impressions:totals         HASH id -> impressions folded in so far (merged into reads)
  votes:{id}                 HASH user -> score 1..5
  impressions:pending        HASH id -> count recorded since the last claim
  impressions:batch:{b}      HASH id -> count claimed by batch b (pending RENAMEd here)
  impressions:applied:{b}    SET of ids of batch b already added to their totals
  impressions:open           SET of batch ids claimed but not finished
  impressions:done:{b}       string with a 7-day TTL: batch b finished, claim nothing again
  session:{id}               string {"data": ...}, expires an hour after the session does
  sessions                   ZSET id -> expires_at (the source of truth for expiry)
  notifications:{recipient}  LIST of JSON entries, newest first, trimmed to 1000
  notification:{id}          string with a 7-day TTL: this notification id was already added

Multi-key steps that must not be split by a crash run as one Lua script or MULTI/EXEC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import WatchError

from app.core.redis_client import LoopLocalRedis, PoolLimits
from app.core.tasks.store.redis import translate_unavailable
from app.tasks.data.common import (
    DONE_TTL_SECONDS,
    NOTIFICATION_ID_TTL_SECONDS,
    OUTBOX_MAX,
    check_count,
    check_score,
    check_ttl,
    merged_document,
    new_resource,
    stored_document,
    with_impressions,
)

# RENAME moves every pending count into the batch in one step; it runs only when the batch does
# not exist yet, so a re-run with the same id gets its old batch back instead of newer counts.
_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
return redis.call('HGETALL', KEYS[2])
"""

# Per resource: the SADD to the applied set and the HINCRBY happen together or not at all, so a
# sync killed between two resources (or two appliers sharing a batch) never adds a count twice.
# The count is read from the batch itself and passed to HINCRBY as the stored string (a Lua
# number would print large values in exponent form).
_APPLY = """
if redis.call('EXISTS', KEYS[5]) == 1 then return {} end
local n = #KEYS - 5
local out = {}
for i = 1, n do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], id)
  if raw and tonumber(raw) > 0 and redis.call('SADD', KEYS[2], id) == 1 then
    redis.call('HINCRBY', KEYS[3], id, raw)
    redis.call('SET', KEYS[5 + i], ARGV[n + i], 'NX')
    redis.call('SADD', KEYS[4], id)
    out[#out + 1] = id
    out[#out + 1] = raw
  end
end
return out
"""

# The dedupe marker and the outbox entry are written together, so a retried send appends once.
_NOTIFY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"""

#: Resources per apply script call: keeps each script short so Redis is never blocked long.
_APPLY_CHUNK = 200
#: How long a session key outlives its expiry, so Redis reclaims it even if no cleanup runs.
_SESSION_GRACE_MS = 3_600_000
_PAGE = 500


class RedisDomainData:
    kind = "redis"

    def __init__(
        self, url: str, *, prefix: str = "tasklane:", limits: PoolLimits | None = None
    ) -> None:
        self._redis = LoopLocalRedis(url, limits=limits)
        self.prefix = f"{prefix}domain:"
        self._resources = f"{self.prefix}resources"
        self._totals = f"{self.prefix}impressions:totals"
        self._pending = f"{self.prefix}impressions:pending"
        self._open = f"{self.prefix}impressions:open"
        self._sessions = f"{self.prefix}sessions"

    def _resource(self, resource_id: str) -> str:
        return f"{self.prefix}resource:{resource_id}"

    def _batch_keys(self, batch_id: str) -> tuple[str, str, str]:
        base = f"{self.prefix}impressions:"
        return f"{base}batch:{batch_id}", f"{base}applied:{batch_id}", f"{base}done:{batch_id}"

    # -- resources ---------------------------------------------------------------------------

    async def get_resource(self, resource_id: str) -> dict[str, Any] | None:
        async with (
            translate_unavailable("reading a resource"),
            self._redis.client().pipeline(transaction=False) as pipe,
        ):
            pipe.get(self._resource(resource_id))
            pipe.hget(self._totals, resource_id)
            raw, total = await pipe.execute()
        if raw is None:
            return None
        return with_impressions(json.loads(raw), int(total or 0))

    async def save_resource(self, resource: dict[str, Any]) -> None:
        document = stored_document(resource)
        async with (
            translate_unavailable("saving a resource"),
            self._redis.client().pipeline(transaction=True) as pipe,
        ):
            pipe.set(self._resource(document["id"]), json.dumps(document))
            pipe.sadd(self._resources, document["id"])
            await pipe.execute()

    async def update_resource(self, resource_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        key = self._resource(resource_id)
        async with (
            translate_unavailable("updating a resource"),
            self._redis.client().pipeline(transaction=True) as pipe,
        ):
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    current = json.loads(raw) if raw is not None else None
                    document = merged_document(current, resource_id, changes)
                    pipe.multi()
                    pipe.set(key, json.dumps(document))
                    pipe.sadd(self._resources, resource_id)
                    pipe.hget(self._totals, resource_id)
                    _, _, total = await pipe.execute()
                    return with_impressions(document, int(total or 0))
                except WatchError:
                    continue  # another writer changed it between WATCH and EXEC: re-read

    async def resource_ids(self) -> list[str]:
        async with translate_unavailable("listing resources"):
            return sorted(await self._redis.client().smembers(self._resources))

    # -- votes -------------------------------------------------------------------------------

    async def add_vote(self, resource_id: str, user: str, score: int) -> None:
        check_score(score)
        async with (
            translate_unavailable("recording a vote"),
            self._redis.client().pipeline(transaction=True) as pipe,
        ):
            pipe.hset(f"{self.prefix}votes:{resource_id}", user, score)
            # A voted-on resource exists from then on, so calculate_all_ratings sees it.
            pipe.set(self._resource(resource_id), json.dumps(new_resource(resource_id)), nx=True)
            pipe.sadd(self._resources, resource_id)
            await pipe.execute()

    async def votes(self, resource_id: str) -> dict[str, int]:
        async with translate_unavailable("reading votes"):
            raw = await self._redis.client().hgetall(f"{self.prefix}votes:{resource_id}")
        return {user: int(score) for user, score in raw.items()}

    # -- impressions -------------------------------------------------------------------------

    async def record_impressions(self, resource_id: str, count: int = 1) -> None:
        check_count(count)
        async with translate_unavailable("recording impressions"):
            await self._redis.client().hincrby(self._pending, resource_id, count)

    async def pending_impressions(self) -> dict[str, int]:
        async with translate_unavailable("reading pending impressions"):
            raw = await self._redis.client().hgetall(self._pending)
        return {resource_id: int(count) for resource_id, count in raw.items()}

    async def claim_impressions(self, batch_id: str) -> dict[str, int]:
        batch, _, done = self._batch_keys(batch_id)
        async with translate_unavailable("claiming impressions"):
            flat = await self._redis.client().eval(
                _CLAIM, 4, self._pending, batch, done, self._open, batch_id
            )
        return _pairs(flat)

    async def apply_impressions(self, batch_id: str) -> dict[str, int]:
        batch, applied, done = self._batch_keys(batch_id)
        client = self._redis.client()
        result: dict[str, int] = {}
        async with translate_unavailable("applying impressions"):
            resource_ids = sorted(await client.hkeys(batch))
            for start in range(0, len(resource_ids), _APPLY_CHUNK):
                chunk = resource_ids[start : start + _APPLY_CHUNK]
                keys = [batch, applied, self._totals, self._resources, done]
                keys += [self._resource(resource_id) for resource_id in chunk]
                documents = [json.dumps(new_resource(resource_id)) for resource_id in chunk]
                flat = await client.eval(_APPLY, len(keys), *keys, *chunk, *documents)
                result.update(_pairs(flat))
            # Finishing is idempotent: a crash before it only means the next caller repeats it.
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(batch, applied)
                pipe.set(done, "1", ex=DONE_TTL_SECONDS)
                pipe.srem(self._open, batch_id)
                await pipe.execute()
        return result

    async def open_impression_batches(self) -> list[str]:
        async with translate_unavailable("listing impression batches"):
            return sorted(await self._redis.client().smembers(self._open))

    # -- sessions ----------------------------------------------------------------------------

    async def touch_session(self, session_id: str, *, ttl: float, data: dict[str, Any]) -> None:
        check_ttl(ttl)
        # Local clock, like cleanup_sessions' "now": both sides of the comparison use one kind.
        expires_at = time.time() + ttl
        async with (
            translate_unavailable("touching a session"),
            self._redis.client().pipeline(transaction=True) as pipe,
        ):
            pipe.set(
                f"{self.prefix}session:{session_id}",
                json.dumps({"data": data}, allow_nan=False),
                px=int(ttl * 1000) + _SESSION_GRACE_MS,
            )
            pipe.zadd(self._sessions, {session_id: expires_at})
            await pipe.execute()

    async def sessions(self) -> dict[str, dict[str, Any]]:
        client = self._redis.client()
        found: dict[str, dict[str, Any]] = {}
        async with translate_unavailable("listing sessions"):
            entries = await client.zrange(self._sessions, 0, -1, withscores=True)
            for start in range(0, len(entries), _PAGE):
                page = entries[start : start + _PAGE]
                raws = await client.mget([f"{self.prefix}session:{sid}" for sid, _ in page])
                for (session_id, expires_at), raw in zip(page, raws, strict=True):
                    # A key Redis already expired still has its ZSET entry: report it (with no
                    # data) so cleanup_sessions removes the entry too.
                    data = json.loads(raw)["data"] if raw is not None else {}
                    found[session_id] = {"data": data, "expires_at": expires_at}
        return found

    async def delete_sessions(self, session_ids: Iterable[str]) -> int:
        ids = sorted(set(session_ids))
        if not ids:
            return 0
        async with (
            translate_unavailable("deleting sessions"),
            self._redis.client().pipeline(transaction=True) as pipe,
        ):
            pipe.delete(*(f"{self.prefix}session:{session_id}" for session_id in ids))
            pipe.zrem(self._sessions, *ids)
            _, removed = await pipe.execute()
        return int(removed)

    # -- notifications -----------------------------------------------------------------------

    async def add_notification(self, notification_id: str, notification: dict[str, Any]) -> bool:
        entry = json.dumps(notification, allow_nan=False)
        outbox = f"{self.prefix}notifications:{notification['recipient']}"
        async with translate_unavailable("adding a notification"):
            added = await self._redis.client().eval(
                _NOTIFY,
                2,
                f"{self.prefix}notification:{notification_id}",
                outbox,
                entry,
                NOTIFICATION_ID_TTL_SECONDS,
                OUTBOX_MAX,
            )
        return bool(added)

    async def notifications(self, recipient: str, limit: int = 50) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        async with translate_unavailable("reading notifications"):
            raws = await self._redis.client().lrange(
                f"{self.prefix}notifications:{recipient}", 0, limit - 1
            )
        return [json.loads(raw) for raw in raws]

    async def close(self) -> None:
        await self._redis.close()


def _pairs(flat: list[str]) -> dict[str, int]:
    """[k1, v1, k2, v2, ...] (HGETALL or a script's reply) as {k: int(v)}."""
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
