"""Recovery: a dead worker's unacknowledged messages go back to their queues within seconds.

Why: with acks_late, a message a worker received stays in kombu's `unacked` hash until the ack.
A worker killed with SIGKILL (an OOM-killed pod) never acks, and kombu hands such a message out
again only after the visibility timeout (≥ 1 h here, DESIGN.md §3): its tasks stay STARTED that
long. Celery's only knob trades stuck tasks (long timeout) for duplicate runs of long tasks
(short timeout). tasklane knows when a worker is dead, so it restores exactly that worker's
messages as soon as it is declared dead, and keeps the visibility timeout as the last resort.

Whose messages: kombu does not record who holds a message. A worker's consuming channel
(app/workers/transport.py) writes `unacked:holders` (delivery tag -> hostname) in the same
MULTI/EXEC as kombu's own `unacked` entry, and drops it with the ack, so the holders are exact:
reserved-but-not-started messages included, and never a message another worker holds.

Declared dead: by the one liveness rule (presence.LivenessRule, the monitor's too): no beat
inside the heartbeat window, or its heartbeat connection seen closed and no beat for the grace.
A worker that merely lost Redis is told apart in three ways:
  - a dropped connection (CLIENT KILL, a network blip) reconnects at the next beat, inside the
    grace (interval + 1 s), and the restore script re-checks the beat atomically: a worker that
    beat since it was judged is left alone;
  - a Redis restart closes every connection and proves nothing about any worker: the monitor
    forgets the connections it saw when the server's run_id changes, and a beat is never
    judged older than the server's start (uptime), so a worker is dead only after a whole
    heartbeat window of Redis being up without its beat;
  - a worker cut off from Redis longer than the window cannot be told from a dead one, so it
    is fenced instead: the restore script removes it from presence and writes
    `worker:{host}:evicted`. Its tasks' records are guarded writes (execution.py): the
    redelivered copy takes the record over (idempotent: RETRY, run again; otherwise FAILURE
    `Interrupted`, never run twice), and the cut-off worker's late outcome is refused by the
    compare-and-set. Its late ack cannot drop the message from the worker that now holds it
    (transport.py RELEASE). When it reaches Redis again its heartbeat reads the fence and
    says so in its log.

Exactly once: one Lua script per dead worker moves each message from `unacked` to its queue
only while the holder entry still names that worker and the entry is byte for byte the one read;
two api processes (or a worker's heartbeat) racing restore each message once, the loser finds
nothing to move. The message goes back as kombu's own restore_by_tag would put it: flagged
`redelivered`, RPUSHed to the consuming end of its queue list or priority sub-list
(redelivery.py).

Who runs it: every api process's WorkerMonitor tick (hybrid executor; it sees closed heartbeat
connections, so ~interval + 1 s + one tick after the kill), and every worker's heartbeat (the
heartbeat window, for deployments with no hybrid api, e.g. TASKLANE_EXECUTOR=celery or no api
at all). Requires the broker to be the store's Redis (one script touches both) with no kombu
global_keyprefix; otherwise only the visibility timeout applies (recovery_problem() says why).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core.tasks import metrics
from app.core.tasks.broker_layout import BrokerLayout
from app.core.tasks.metrics import RecoveryReason
from app.core.tasks.presence import LivenessRule, WorkerKeys
from app.core.tasks.redelivery import (
    BINDING_PREFIX,
    UNACKED,
    UNACKED_INDEX,
    Redelivery,
    parse,
    resolve,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

log = logging.getLogger("tasklane.recovery")

#: How long a fence stays readable for a worker that comes back (a day).
FENCE_TTL = 86400

# KEYS: unacked, unacked_index, holders, workers, worker:{h}, worker:{h}:active, evicted
# ARGV: host, cutoff ('' = none), `{prefix}active:`, now, evict ('1'|'0'),
#       then per message: tag, entry as read ('' = gone), destination list, payload.
# Returns -1 when the worker beat after `cutoff` (alive after all), else the messages moved.
_RESTORE = """
local host = ARGV[1]
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[4], host)
  if score and tonumber(score) > tonumber(ARGV[2]) then return -1 end
end
local moved = 0
for i = 6, #ARGV, 4 do
  local tag = ARGV[i]
  if redis.call('HGET', KEYS[3], tag) == host then
    local entry = redis.call('HGET', KEYS[1], tag)
    if entry == ARGV[i + 1] then
      redis.call('RPUSH', ARGV[i + 2], ARGV[i + 3])
      moved = moved + 1
    end
    if entry == ARGV[i + 1] or not entry then
      redis.call('HDEL', KEYS[1], tag)
      redis.call('ZREM', KEYS[2], tag)
      redis.call('HDEL', KEYS[3], tag)
    end
  end
end
if ARGV[5] == '1' then
  local active = redis.call('HGETALL', KEYS[6])
  for j = 1, #active, 2 do
    redis.call('ZREM', ARGV[3] .. active[j + 1], active[j])
  end
  redis.call('DEL', KEYS[6], KEYS[5])
  redis.call('ZREM', KEYS[4], host)
  redis.call('SET', KEYS[7], ARGV[4], 'EX', FENCE_TTL)
end
return moved
""".replace("FENCE_TTL", str(FENCE_TTL))


def recovery_problem(
    broker_url: str | None, store_url: str | None, transport_options: Mapping[str, Any]
) -> str | None:
    """Why a dead worker's messages cannot be restored early here (None: they can)."""
    # Imported when asked: the wire module loads Celery, which the monitor's importers may not.
    from app.core.tasks.executors.wire import same_redis

    if not broker_url or not broker_url.startswith("redis://"):
        return "the broker is not a redis:// URL"
    if store_url is None or not same_redis(broker_url, store_url):
        return "the broker is not the result store's Redis"
    if transport_options.get("global_keyprefix"):
        return "broker_transport_options sets global_keyprefix"
    return None


def recovery_layout(
    broker_url: str | None, store_url: str | None, transport_options: Mapping[str, Any]
) -> BrokerLayout | None:
    """The broker's layout when recovery can run here, else None (logged once, with why)."""
    problem = recovery_problem(broker_url, store_url, transport_options)
    if problem is not None:
        log.info("dead workers' messages are left to the visibility timeout: %s", problem)
        return None
    return BrokerLayout.from_transport_options(transport_options)


@dataclass(slots=True)
class _Plan:
    """What one sweep found: per dead host, the cutoff its script re-checks and its messages."""

    cutoffs: dict[str, float | None] = field(default_factory=dict)
    moves: dict[str, list[Redelivery]] = field(default_factory=dict)


class Recovery:
    """Finds workers declared dead that still hold unacknowledged messages and restores them."""

    def __init__(
        self,
        keys: WorkerKeys,
        rule: LivenessRule,
        layout: BrokerLayout | None = None,
    ) -> None:
        self.keys = keys
        self.rule = rule
        self.layout = layout or BrokerLayout()

    # -- the sync and async sweeps (same steps, same pure helpers) -----------------------------

    def sweep(
        self,
        client: redis.Redis,
        now: float,
        connected: Mapping[str, bool | None] | None = None,
        *,
        reason: RecoveryReason = "worker_dead",
    ) -> dict[str, int]:
        """Restore the messages of every holder the rule declares dead; hostname -> messages
        restored (sync client, decode_responses=True)."""
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.unacked_holders)
            pipe.zrange(self.keys.workers, 0, -1, withscores=True)
            pipe.info("server")
            holders, scores, info = pipe.execute()
        dead = self._dead(holders, dict(scores), info, connected or {}, now)
        if not dead:
            return {}
        plan = self._plan(dead, holders, client.hmget(UNACKED, *self._tags(dead, holders)))
        self._bind(plan, self._bindings_sync(client, self._exchanges(plan)))
        return self._count(
            {host: self._run_sync(client, host, plan, now, evict=True) for host in plan.moves},
            reason,
        )

    async def asweep(
        self,
        client: aioredis.Redis,
        now: float,
        connected: Mapping[str, bool | None] | None = None,
        *,
        reason: RecoveryReason = "worker_dead",
    ) -> dict[str, int]:
        """See sweep()."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.unacked_holders)
            pipe.zrange(self.keys.workers, 0, -1, withscores=True)
            pipe.info("server")
            holders, scores, info = await pipe.execute()
        dead = self._dead(holders, dict(scores), info, connected or {}, now)
        if not dead:
            return {}
        tags = self._tags(dead, holders)
        plan = self._plan(dead, holders, await client.hmget(UNACKED, *tags))
        bindings = {}
        for exchange in self._exchanges(plan):
            bindings[exchange] = set(await client.smembers(BINDING_PREFIX + exchange))
        self._bind(plan, bindings)
        restored = {}
        for host in plan.moves:
            keys, args = self._script_call(host, plan, now, evict=True)
            restored[host] = int(await client.eval(_RESTORE, len(keys), *keys, *args))
        return self._count(restored, reason)

    def restore_own(self, client: redis.Redis, hostname: str, now: float) -> int:
        """At a worker's start, before it consumes: whatever is still held under its hostname
        belongs to a previous incarnation (a restarted container), so it goes back now."""
        holders = client.hgetall(self.keys.unacked_holders)
        if hostname not in holders.values():
            return 0
        dead = {hostname: None}
        plan = self._plan(dead, holders, client.hmget(UNACKED, *self._tags(dead, holders)))
        self._bind(plan, self._bindings_sync(client, self._exchanges(plan)))
        restored = self._run_sync(client, hostname, plan, now, evict=False)
        return self._count({hostname: restored}, "worker_restarted").get(hostname, 0)

    # -- pure steps ------------------------------------------------------------------------------

    def _dead(
        self,
        holders: Mapping[str, str],
        scores: Mapping[str, float],
        info: Mapping[str, Any],
        connected: Mapping[str, bool | None],
        now: float,
    ) -> dict[str, float | None]:
        """Holders the liveness rule declares dead -> the cutoff the script re-checks."""
        # A beat is never judged older than the server's start: after a Redis restart every
        # worker gets a whole window to beat again (see the module docstring).
        server_start = now - float(info.get("uptime_in_seconds", 0) or 0)
        dead: dict[str, float | None] = {}
        for host in sorted(set(holders.values())):
            score = scores.get(host)
            seen = max(float(score) if score is not None else float("-inf"), server_start)
            state = connected.get(host)
            if not self.rule.is_live(seen, now, state):
                dead[host] = self.rule.cutoff(state, now)
        return dead

    @staticmethod
    def _tags(dead: Mapping[str, object], holders: Mapping[str, str]) -> list[str]:
        return [tag for tag, host in holders.items() if host in dead]

    def _plan(
        self,
        dead: Mapping[str, float | None],
        holders: Mapping[str, str],
        entries: Iterable[str | None],
    ) -> _Plan:
        plan = _Plan(cutoffs=dict(dead), moves={host: [] for host in dead})
        for tag, entry in zip(self._tags(dead, holders), entries, strict=True):
            redelivery = parse(tag, entry)
            if redelivery is None:
                log.error("cannot read unacked message %s of %s; left to kombu", tag, holders[tag])
                continue
            plan.moves[holders[tag]].append(redelivery)
        return plan

    @staticmethod
    def _exchanges(plan: _Plan) -> set[str]:
        return {move.exchange for moves in plan.moves.values() for move in moves if move.exchange}

    def _bind(self, plan: _Plan, bindings: Mapping[str, set[str]]) -> None:
        """Give each move its destination list (redelivery.resolve); drop what has none."""
        for host, moves in plan.moves.items():
            resolved = []
            for move in moves:
                found = resolve(move, self.layout, bindings)
                if found is None:
                    log.error(
                        "no queue bound to %s/%s for message %s of %s; left to kombu",
                        move.exchange,
                        move.routing_key,
                        move.tag,
                        host,
                    )
                    continue
                resolved.append(found)
            plan.moves[host] = resolved

    def _bindings_sync(self, client: redis.Redis, exchanges: set[str]) -> dict[str, set[str]]:
        return {exchange: set(client.smembers(BINDING_PREFIX + exchange)) for exchange in exchanges}

    def _script_call(
        self, host: str, plan: _Plan, now: float, *, evict: bool
    ) -> tuple[list[str], list[str]]:
        keys = self.keys
        cutoff = plan.cutoffs.get(host)
        script_keys = [
            UNACKED,
            UNACKED_INDEX,
            keys.unacked_holders,
            keys.workers,
            keys.worker(host),
            keys.worker_active(host),
            keys.worker_evicted(host),
        ]
        args = [
            host,
            "" if cutoff is None else repr(cutoff),
            keys.active(""),
            repr(now),
            "1" if evict else "0",
        ]
        for move in plan.moves[host]:
            args += [move.tag, move.entry, move.destination, move.payload]
        return script_keys, args

    def _run_sync(
        self, client: redis.Redis, host: str, plan: _Plan, now: float, *, evict: bool
    ) -> int:
        keys, args = self._script_call(host, plan, now, evict=evict)
        return int(client.eval(_RESTORE, len(keys), *keys, *args))

    @staticmethod
    def _count(restored: dict[str, int], reason: RecoveryReason) -> dict[str, int]:
        done = {host: count for host, count in restored.items() if count >= 0}
        for host, count in done.items():
            if count:
                metrics.count_recovered(reason, count)
                log.warning(
                    "restored %d unacknowledged messages of %s worker %s",
                    count,
                    "dead" if reason == "worker_dead" else "the previous",
                    host,
                    extra={"worker": host, "reason": reason},
                )
        return done
