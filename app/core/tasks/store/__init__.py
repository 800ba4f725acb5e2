"""ResultStore: where every task record lives, whichever executor runs the task.

Two implementations with one contract (tests/unit/test_store_contract.py runs the same suite on
both): `memory` for the embedded single mode, `redis` when several processes share the records.
Besides records, the store keeps the small amount of coordination state the in-process runner
needs across processes: which runner owns which unfinished task, runner heartbeats (so a dead
runner's tasks can be marked Interrupted), and named leases (one scheduler among api replicas).

A Redis store that is also the Celery broker can carry a task's broker message in the very step
that creates its record (QueuePush, built by executors/wire.py): one round trip, and the message
exists exactly when the record was created. Likewise a Celery worker's active-set entry
(Riders, built by app/core/tasks/presence.py) rides in the round trips of its STARTED and final
writes instead of taking two of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from app.core.tasks.models import TaskResult, TaskStatus

if TYPE_CHECKING:
    from app.config import Settings

#: A record transformation: the new record, or None to leave the stored one unchanged.
Mutation = Callable[[TaskResult], TaskResult | None]


@dataclass(frozen=True, slots=True)
class QueuePush:
    """A broker message to LPUSH onto the Redis list `key` (a Celery queue) with its record."""

    key: str
    payload: str


@dataclass(frozen=True, slots=True)
class KeyOp:
    """One Redis command on one key: `command key *args` (e.g. HDEL worker:h:active id)."""

    command: str
    key: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Riders:
    """Redis commands carried by update() in its compare-and-set step (DESIGN.md §4 keys that
    are not records): `before` run ahead of the record's read, `after` once it is written."""

    before: tuple[KeyOp, ...] = ()
    after: tuple[KeyOp, ...] = ()


#: No riders: what update() carries unless told otherwise.
NO_RIDERS = Riders()


class ResultStore(Protocol):
    """What every store does; both stores subclass it (and share create())."""

    kind: str

    #: The Redis URL a QueuePush given to create() lands on; None: this store cannot carry one.
    push_url: str | None

    async def create(
        self, record: TaskResult, *, push: QueuePush | None = None
    ) -> tuple[TaskResult, bool]:
        """Store record unless its id exists; returns (stored record, created?). `push` is
        pushed in the same atomic step, only when the record is created.

        Raises ValueError for a push given to a store that cannot carry messages.
        """
        [outcome] = await self.create_many([record], pushes=[push])
        return outcome

    async def create_many(
        self,
        records: Sequence[TaskResult],
        *,
        pushes: Sequence[QueuePush | None] | None = None,
    ) -> list[tuple[TaskResult, bool]]:
        """create() for each record (with pushes[i], when given), in order, in one step (one
        round trip on Redis); an id repeated in the batch counts as existing from its first
        occurrence on."""
        ...

    async def get(self, task_id: str) -> TaskResult | None:
        """The record, or None when the id is unknown or expired."""
        ...

    async def update(
        self,
        task_id: str,
        mutate: Mutation,
        *,
        expected: TaskResult | None = None,
        riders: Riders = NO_RIDERS,
    ) -> TaskResult | None:
        """Atomically apply mutate to the stored record; returns the new record, or None when
        the record is missing or mutate declined (returned None).

        `expected` is a hint, never a condition: the record the caller believes is stored (it
        just read or wrote it). When right, Redis skips the read (one round trip); when stale,
        mutate is applied to the record actually stored, exactly as without the hint.

        `riders` (Redis only; a store without Redis has no such keys and ignores them) travel
        in the compare-and-set's own atomic step: `before` ahead of the first one (never sent
        when mutate declines before any write is tried); `after` in the step that writes the
        record or finds it missing, never in one that loses a race, and on their own when
        update() ends without a write. A rider's own error is logged, never raised.
        """
        ...

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> list[TaskResult]:
        """Most recently submitted first, optionally filtered."""
        ...

    async def claim(self, task_id: str, owner: str) -> None:
        """Note that runner `owner` holds the unfinished task (pending or running)."""
        ...

    async def release(self, task_ids: Iterable[str]) -> None:
        """The tasks finished (or were handed on): forget their owner."""
        ...

    async def claims(self) -> dict[str, str]:
        """Every claimed task id with its owner."""
        ...

    async def heartbeat(self, owner: str, ttl: float) -> None:
        """Runner `owner` is alive for the next ttl seconds."""
        ...

    async def forget_runner(self, owner: str) -> None:
        """Runner `owner` stopped cleanly; its heartbeat ends now."""
        ...

    async def live_runners(self, owners: Iterable[str]) -> set[str]:
        """The subset of owners whose heartbeat has not expired."""
        ...

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the named lease for owner; False while someone else holds it."""
        ...

    async def release_lease(self, name: str, owner: str) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable when the backing service does not answer."""
        ...

    async def close(self) -> None: ...


def create_store(settings: Settings) -> ResultStore:
    """The store settings.resolved_store names, configured from settings."""
    if settings.resolved_store == "redis":
        from app.core.redis_client import PoolLimits
        from app.core.tasks.store.redis import RedisStore

        assert settings.store_redis_url is not None  # Settings.check() guarantees it
        return RedisStore(
            settings.store_redis_url,
            prefix=settings.key_prefix,
            result_ttl=settings.result_ttl,
            recent_max=settings.recent_max,
            limits=PoolLimits.from_settings(settings),
        )
    from app.core.tasks.store.memory import MemoryStore

    return MemoryStore(
        result_ttl=settings.result_ttl,
        max_records=settings.recent_max,
        max_bytes=settings.memory_store_max_bytes,
    )
