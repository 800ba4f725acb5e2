"""PriorityGate: the in-process runner's concurrency slots, handed out by priority.

asyncio.Semaphore wakes waiters in arrival order; the runner needs Celery's order on Redis
instead: the lowest priority number first, first come first served within a level (DESIGN.md
§3). A task sleeping through a countdown or a retry backoff is not waiting here: it asks for a
slot only once it may start.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """At most `slots` holders at once; a freed slot goes to the waiter with the lowest
    (priority, arrival)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        # (priority, arrival, future). A cancelled waiter's entry stays until release() pops
        # and skips it. Invariant: while anyone waits, no slot is free.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Waiters not yet given a slot (cancelled ones excluded)."""
        return sum(1 for _, _, future in self._waiting if not future.done())

    async def acquire(self, priority: int) -> None:
        """Take a slot, waiting behind every waiter with a lower number (or the same number
        and an earlier arrival)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted and cancelled in the same turn: pass the slot on
            raise

    def release(self) -> None:
        """Give the slot to the first live waiter, or free it."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        """`async with gate.slot(priority):` holds one slot for the block."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
