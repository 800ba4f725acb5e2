"""ResultStore: where every task record lives, whichever executor runs the task.

Two implementations with one contract (tests/unit/test_store_contract.py runs the same suite on
both): `memory` for the embedded single mode, `redis` when several processes share the records.
Besides records, the store keeps the small amount of coordination state the in-process runner
needs across processes: which runner owns which unfinished task, runner heartbeats (so a dead
runner's tasks can be marked Interrupted), and named leases (one scheduler among api replicas).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from app.core.tasks.models import TaskResult, TaskStatus

if TYPE_CHECKING:
    from app.config import Settings

#: A record transformation: the new record, or None to leave the stored one unchanged.
Mutation = Callable[[TaskResult], TaskResult | None]


class ResultStore(Protocol):
    kind: str

    async def create(self, record: TaskResult) -> tuple[TaskResult, bool]:
        """Store record unless its id exists; returns (stored record, created?)."""
        ...

    async def get(self, task_id: str) -> TaskResult | None:
        """The record, or None when the id is unknown or expired."""
        ...

    async def update(self, task_id: str, mutate: Mutation) -> TaskResult | None:
        """Atomically apply mutate to the stored record; returns the new record, or None when
        the record is missing or mutate declined (returned None)."""
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
        from app.core.tasks.store.redis import RedisStore

        assert settings.store_redis_url is not None  # Settings.check() guarantees it
        return RedisStore(
            settings.store_redis_url,
            prefix=settings.key_prefix,
            result_ttl=settings.result_ttl,
            recent_max=settings.recent_max,
        )
    from app.core.tasks.store.memory import MemoryStore

    return MemoryStore(result_ttl=settings.result_ttl, max_records=settings.recent_max)
