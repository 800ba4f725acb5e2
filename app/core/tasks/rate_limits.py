"""Global rate limits: one `@task(rate_limit="10/s")` holds across every process and both planes.

Celery's own rate_limit is per worker instance (celery/celery#5732): ten workers run a "10/s"
task at up to 100/s. Here every start of a limited task, in the api's in-process runner or on
any worker, asks one limiter first (execution.py, right before the STARTED write):

- RedisLimiter: one Lua script (GCRA, the "generic cell rate algorithm") on the store's Redis,
  timed by the Redis server's own clock (TIME), so every host shares one clock and one state.
- InProcessLimiter: the same algorithm in Python, for the memory store (one process).

GCRA keeps one number per task, the theoretical arrival time (TAT): a start at `now` is allowed
when now >= TAT - (burst - 1) * interval, and moves TAT to max(TAT, now) + interval, where
interval = period / count. With burst 1 (the default) starts are spaced by the interval, as
Celery's token bucket of capacity 1 spaces them on one worker.

A refused caller gets a *ticket*, the time to come back, from a second number, the line: tickets
are handed out one interval apart, never behind the earliest allowed time, so a hundred refused
tasks come back one by one instead of all at once. While the line is ahead of now, a newcomer
joins it rather than take the slot of a ticket holder; a ticket holder coming back still passes
a real check (a slow worker may come back late), which is what makes "at most count (+ burst)
starts in any period" hold for the actual start times. A ticket holder refused by that check
(the holder before it came back late, moving TAT) gets the next free slot, not a place at the
end of the line. A ticket is a duration (Redis time of
the ticket minus Redis time now), slept on the caller's monotonic clock: no host clock is read.

Waiting tasks are also kept in a ZSET (id -> ticket) per task, for the tasklane_rate_delayed
gauge, read at scrape time; an entry goes when its task starts, is cancelled or is settled, and
entries older than STALE_AFTER past their ticket (a process that died while holding one) are
trimmed.

Keys (under the store's prefix; a DESIGN.md §4 addition): `rate:{task}` (TAT), `rate:{task}:line`
(next ticket), `rate:{task}:waiting` (ZSET id -> ticket, ms of Redis time).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import NoScriptError

from app.core.tasks import metrics
from app.core.tasks.errors import StoreUnavailable
from app.core.tasks.store.redis import RedisStore, translate_unavailable

if TYPE_CHECKING:
    from app.core.redis_client import LoopLocalRedis
    from app.core.tasks.models import TaskSpec
    from app.core.tasks.registry import TaskRegistry
    from app.core.tasks.store import ResultStore

#: The environment variable that overrides declared limits without a code change.
RATE_LIMITS_VARIABLE = "TASKLANE_RATE_LIMITS"
#: Seconds a waiting entry outlives its ticket before the gauge stops counting it.
STALE_AFTER = 60.0
#: Seconds a task waits before checking again when the limiter cannot be reached. It waits
#: rather than runs: a rate limit usually protects an external API, which an outage of our
#: Redis does not make any faster.
UNREACHABLE_RECHECK = 1.0

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SYNTAX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_OFF = frozenset({"0", "none", "off"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most `count` starts per `period` seconds, `burst` of them at once."""

    count: float
    period: float
    #: Starts allowed back to back after a quiet spell; 1 spaces every start by `interval`.
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds between two starts at the steady rate."""
        return self.period / self.count

    def __str__(self) -> str:
        count = int(self.count) if self.count == int(self.count) else self.count
        unit = {seconds: unit for unit, seconds in _PERIODS.items()}.get(self.period)
        return f"{count}/{unit}" if unit else f"{count} per {self.period:g} s"


def parse_rate_limit(text: str | float, *, burst: int = 1) -> RateLimit | None:
    """Celery's syntax: "10/s", "100/m", "5/h", or a bare number meaning per second; "0"
    (and, for overrides, "none" or "off") means no limit: None.

    Raises ValueError with the accepted forms when `text` is none of them.
    """
    raw = str(text).strip().lower()
    if burst < 1:
        raise ValueError(f"rate_burst must be at least 1, not {burst}")
    if raw in _OFF:
        return None
    match = _SYNTAX.match(raw)
    if match is None:
        raise ValueError(
            f"rate limit {text!r} is not N/s, N/m, N/h or a number (per second), "
            "e.g. '10/s' or '100/m'; '0' or 'none' for no limit"
        )
    count = float(match.group(1))
    if count == 0:
        return None
    return RateLimit(count=count, period=_PERIODS[match.group(2) or "s"], burst=burst)


def parse_overrides(raw: Mapping[str, str], registry: TaskRegistry) -> dict[str, RateLimit | None]:
    """TASKLANE_RATE_LIMITS (already split into name -> text by config.py) checked against the
    registry; each override keeps the task's declared burst. None switches a limit off.

    Raises ValueError naming the variable and the bad entry (a bad limit or an unknown task).
    """
    limits: dict[str, RateLimit | None] = {}
    for name, text in raw.items():
        entry = f"{name}={text}"
        if name not in registry:
            raise ValueError(
                f"{RATE_LIMITS_VARIABLE} entry {entry!r} names no registered task "
                f"(known: {', '.join(registry.names())})"
            )
        spec = registry.get(name)
        burst = spec.rate_limit.burst if spec.rate_limit is not None else 1
        try:
            limits[name] = parse_rate_limit(text, burst=burst)
        except ValueError as exc:
            raise ValueError(f"{RATE_LIMITS_VARIABLE} entry {entry!r}: {exc}") from None
    return limits


@dataclass(frozen=True, slots=True)
class Admission:
    """A limiter's answer: start now, or come back in `wait` seconds (the ticket)."""

    allowed: bool
    wait: float = 0.0


class Limiter(Protocol):
    """Where the rate state of every limited task lives (two implementations, one contract)."""

    async def admit(
        self, task: str, limit: RateLimit, task_id: str, *, returning: bool
    ) -> Admission:
        """Take a start slot for task_id now, or hand out a ticket and count it as waiting.

        `returning`: the caller holds a ticket already (it does not queue behind the line).
        Raises StoreUnavailable when the limiter's Redis does not answer.
        """
        ...

    async def forget(self, task: str, task_id: str) -> None:
        """task_id waits no more (cancelled or settled without starting)."""
        ...

    async def waiting(self, tasks: Iterable[str]) -> dict[str, int]:
        """How many tasks of each name wait for their slot now."""
        ...


@dataclass(slots=True)
class _Bucket:
    """One task's GCRA state, in milliseconds of the limiter's clock."""

    tat: float = 0.0
    line: float = 0.0
    waiting: dict[str, float] = field(default_factory=dict)


def gcra_step(
    bucket: _Bucket, now: float, limit: RateLimit, task_id: str, *, returning: bool
) -> Admission:
    """The algorithm both limiters run (the Lua script is this, line for line), times in ms."""
    interval = limit.interval * 1000
    tat = max(bucket.tat, now)
    allow_at = tat - (limit.burst - 1) * interval
    queued = not returning and bucket.line > now
    if not queued and now >= allow_at:
        bucket.tat = tat + interval
        bucket.waiting.pop(task_id, None)
        return Admission(allowed=True)
    if returning:
        # Its turn came and it was a hair late (another start moved TAT): the next free slot,
        # not the end of the line, or a little jitter would cost it the whole wait again.
        ticket = max(allow_at, now)
    else:
        ticket = max(bucket.line, allow_at, now)
        bucket.line = ticket + interval
    bucket.waiting[task_id] = ticket
    return Admission(allowed=False, wait=(ticket - now) / 1000)


class InProcessLimiter:
    """The limiter of the memory store: the same algorithm on this process's monotonic clock."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        # Held for dict operations only, never across an await.
        self._lock = threading.Lock()

    async def admit(
        self, task: str, limit: RateLimit, task_id: str, *, returning: bool
    ) -> Admission:
        with self._lock:
            bucket = self._buckets.setdefault(task, _Bucket())
            return gcra_step(bucket, time.monotonic() * 1000, limit, task_id, returning=returning)

    async def forget(self, task: str, task_id: str) -> None:
        with self._lock:
            bucket = self._buckets.get(task)
            if bucket is not None:
                bucket.waiting.pop(task_id, None)

    async def waiting(self, tasks: Iterable[str]) -> dict[str, int]:
        now = time.monotonic() * 1000
        stale = STALE_AFTER * 1000
        with self._lock:
            return {
                task: sum(
                    1
                    for ticket in self._buckets.get(task, _Bucket()).waiting.values()
                    if ticket > now - stale
                )
                for task in tasks
            }


# gcra_step() in one atomic step. KEYS: TAT, line, waiting ZSET; ARGV: interval ms, burst,
# task id, returning (1/0), stale ms, now ms ("" = the server's TIME). Reply: {1, 0} allowed,
# {0, wait ms as a string} refused (a string: Lua numbers would be truncated to integers).
_ADMIT = """
local now = tonumber(ARGV[6])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local line = tonumber(redis.call('GET', KEYS[2]) or '0')
local allow_at = tat - (burst - 1) * interval
local queued = ARGV[4] ~= '1' and line > now
local keep = math.ceil(tonumber(ARGV[5]))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))
if not queued and now >= allow_at then
  tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + keep)
  redis.call('ZREM', KEYS[3], ARGV[3])
  return {1, '0'}
end
local ticket = math.max(allow_at, now)
if ARGV[4] ~= '1' then
  ticket = math.max(line, ticket)
  line = ticket + interval
  redis.call('SET', KEYS[2], string.format('%.3f', line), 'PX', math.ceil(line - now) + keep)
end
redis.call('ZADD', KEYS[3], string.format('%.3f', ticket), ARGV[3])
redis.call('PEXPIRE', KEYS[3], math.ceil(ticket - now) + keep)
return {0, string.format('%.3f', ticket - now)}
"""
_ADMIT_SHA = hashlib.sha1(_ADMIT.encode()).hexdigest()

# The waiting count per task, stale entries not counted. KEYS: the waiting ZSETs; ARGV: stale ms.
_WAITING = """
local t = redis.call('TIME')
local since = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 - tonumber(ARGV[1])
local counts = {}
for n = 1, #KEYS do counts[n] = redis.call('ZCOUNT', KEYS[n], '(' .. since, '+inf') end
return counts
"""


class RedisLimiter:
    """The limiter of every process sharing one Redis store: one script call per check."""

    def __init__(self, redis: LoopLocalRedis, *, prefix: str = "tasklane:") -> None:
        self._redis = redis
        self.prefix = prefix

    def keys(self, task: str) -> tuple[str, str, str]:
        """The task's TAT, line and waiting keys."""
        base = f"{self.prefix}rate:{task}"
        return base, f"{base}:line", f"{base}:waiting"

    async def admit(
        self,
        task: str,
        limit: RateLimit,
        task_id: str,
        *,
        returning: bool,
        now_ms: float | None = None,
    ) -> Admission:
        """See Limiter.admit; `now_ms` replaces the server's clock (tests compare the script
        with gcra_step on one sequence of times)."""
        args = (
            repr(limit.interval * 1000),
            limit.burst,
            task_id,
            1 if returning else 0,
            repr(STALE_AFTER * 1000),
            "" if now_ms is None else repr(now_ms),
        )
        keys = self.keys(task)
        client = self._redis.client()
        async with translate_unavailable("checking a rate limit"):
            try:
                allowed, wait = await client.evalsha(_ADMIT_SHA, len(keys), *keys, *args)
            except NoScriptError:
                allowed, wait = await client.eval(_ADMIT, len(keys), *keys, *args)
        if allowed == 1:
            return Admission(allowed=True)
        return Admission(allowed=False, wait=float(wait) / 1000)

    async def forget(self, task: str, task_id: str) -> None:
        async with translate_unavailable("forgetting a rate-limit ticket"):
            await self._redis.client().zrem(self.keys(task)[2], task_id)

    async def waiting(self, tasks: Iterable[str]) -> dict[str, int]:
        names = list(tasks)
        if not names:
            return {}
        keys = [self.keys(task)[2] for task in names]
        async with translate_unavailable("reading rate-limit waiting counts"):
            counts = await self._redis.client().eval(
                _WAITING, len(keys), *keys, repr(STALE_AFTER * 1000)
            )
        return dict(zip(names, (int(count) for count in counts), strict=True))


class RateLimits:
    """Which limit applies to a task, and the limiter that enforces it, for execute().

    A task's limit is its TASKLANE_RATE_LIMITS override when there is one, else its declared
    `@task(rate_limit=...)`; looking it up is a dict read, so unlimited tasks pay nothing more.
    """

    def __init__(
        self, limiter: Limiter, overrides: Mapping[str, RateLimit | None] | None = None
    ) -> None:
        self.limiter = limiter
        self._overrides = dict(overrides or {})

    def limit_for(self, spec: TaskSpec) -> RateLimit | None:
        if spec.name in self._overrides:
            return self._overrides[spec.name]
        return spec.rate_limit

    def limited(self, registry: TaskRegistry) -> list[str]:
        """Names of the registered tasks that have a limit (the gauge's label values)."""
        return [spec.name for spec in registry if self.limit_for(spec) is not None]

    async def refresh_gauge(self, registry: TaskRegistry) -> None:
        """Set tasklane_rate_delayed from the limiter (the api's /metrics, before answering);
        an unreachable limiter leaves the last reading."""
        names = self.limited(registry)
        with contextlib.suppress(StoreUnavailable):
            for name, count in (await self.limiter.waiting(names)).items():
                metrics.RATE_DELAYED.labels(task=name).set(count)


def limiter_for(store: ResultStore) -> Limiter:
    """The Redis limiter on a Redis store's own client; the in-process one otherwise."""
    if isinstance(store, RedisStore):
        return RedisLimiter(store.redis, prefix=store.prefix)
    return InProcessLimiter()


def rate_limits_for(
    store: ResultStore, registry: TaskRegistry, overrides: Mapping[str, str]
) -> RateLimits:
    """The RateLimits a process wires (api and worker alike): its store's limiter, and the
    TASKLANE_RATE_LIMITS overrides checked against the registry.

    Raises ValueError naming TASKLANE_RATE_LIMITS and the bad entry.
    """
    return RateLimits(limiter_for(store), parse_overrides(overrides, registry))
