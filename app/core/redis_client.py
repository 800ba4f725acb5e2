"""One asyncio Redis client per event loop, with timeouts short enough to fail fast.

redis.asyncio connections belong to the loop that opened them. The api has one loop for its
lifetime, but a script or a test may run several loops one after another in the same process;
handing each loop its own client keeps a closed loop's sockets from ever being reused.

Each client's pool is bounded (PoolLimits) and a full pool makes a command wait for a free
connection, bounded too: redis-py's default pool raises MaxConnectionsError instead, which is a
ConnectionError and so became a 503 "store unreachable" under a burst of requests while Redis
was perfectly healthy. Only Redis not answering, or no connection freed
within the wait, is reported unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from app.config import Settings

#: Errors that mean "Redis is not answering", as opposed to a bug in a command.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimits:
    """How many connections one loop's client may open, and how long a command waits for one."""

    #: TASKLANE_REDIS_MAX_CONNECTIONS: connections per client (per process and loop).
    max_connections: int = 100
    #: TASKLANE_REDIS_POOL_TIMEOUT: seconds a command waits for a free connection.
    wait: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolLimits:
        return cls(max_connections=settings.redis_max_connections, wait=settings.redis_pool_timeout)


class PoolExhausted(RedisConnectionError):
    """No connection of a full pool was freed within PoolLimits.wait: Redis cannot keep up."""


class _WaitingPool(aioredis.ConnectionPool):
    """redis-py's pool, except that a full pool makes get_connection wait for a release, in
    arrival order and for at most `wait` seconds, instead of raising MaxConnectionsError.

    Not redis-py's BlockingConnectionPool: that one takes a lock and arms a timer on every
    command, ~12 µs each here whether the pool is full or not; this one costs nothing until
    the pool is full. Everything runs on the client's one loop, so no lock is needed.
    """

    def __init__(self, *, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait = wait
        #: One future per coroutine waiting for a connection, oldest first.
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self._waiters:  # nobody queued before us: take a free or new connection
            try:
                return await super().get_connection(*args, **kwargs)
            except MaxConnectionsError:
                pass
        return await self._wait_for_connection(*args, **kwargs)

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        self._wake_next()

    async def _wait_for_connection(self, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        head = False
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            if head:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # woken, then timed out or cancelled: pass the turn on
                else:
                    # Cancelled with us; a release may have dropped it from the queue already.
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolExhausted(
                        f"all {self.max_connections} connections stayed busy for "
                        f"{self.wait:g} s (TASKLANE_REDIS_MAX_CONNECTIONS, "
                        "TASKLANE_REDIS_POOL_TIMEOUT)"
                    ) from None
                raise
            try:
                connection = await super().get_connection(*args, **kwargs)
            except MaxConnectionsError:
                # A newcomer took the released connection between our wake-up and now (it
                # saw no waiter: we had left the queue). Wait again, first in line.
                head = True
                continue
            if self._waiters and self.can_get_connection():
                self._wake_next()  # room for more than us (e.g. a connection just closed)
            return connection

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class LoopLocalRedis:
    """Hands out the Redis client of the running loop, creating it on first use."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        retries: int = 2,
        limits: PoolLimits | None = None,
    ) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._retries = retries
        self.limits = limits or PoolLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aioredis.Redis | None = None

    def client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # The previous loop's client is simply dropped: its loop is gone or not ours.
            # The client owns its pool (from_pool): closing the client closes the pool.
            pool = _WaitingPool.from_url(
                self.url,
                max_connections=self.limits.max_connections,
                wait=self.limits.wait,
                decode_responses=True,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._timeout,
                health_check_interval=30,
                # A pooled connection that Redis closed (a restart) fails its next command:
                # re-dial and retry (twice by default, within ~0.3 s) before reporting it down.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=self._retries),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
            )
            self._client = aioredis.Redis.from_pool(pool)
            self._loop = loop
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await client.aclose()


def redact(url: str) -> str:
    """The URL without its password (safe to print or log)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
