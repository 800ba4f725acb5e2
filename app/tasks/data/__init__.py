"""Where the example domain tasks keep their data: the same backend as the task records.

Memory in the embedded single mode, Redis (keys `{prefix}domain:*`, DESIGN.md §4) whenever
REDIS_URL is set, so an api replica and a Celery worker see the same resources. Every write the
tasks make is idempotent or exactly-once per batch, because tasks may be retried or re-run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Protocol

from app.config import Settings


class DomainData(Protocol):
    kind: str

    # Resources: one JSON document each, {"id": ..., "status": ..., ...}.
    async def get_resource(self, resource_id: str) -> dict[str, Any] | None:
        """The resource document, or None."""
        ...

    async def save_resource(self, resource: dict[str, Any]) -> None:
        """Store the whole document under resource["id"] (last write wins)."""
        ...

    async def update_resource(self, resource_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge `changes` into the document atomically (creating {"id", "status": "new"} when
        absent) and return it. Tasks use this, not get+save, so two tasks writing different
        fields of one resource never undo each other."""
        ...

    async def resource_ids(self) -> list[str]:
        """Every resource id, sorted."""
        ...

    # Votes: the input of rating calculations; one score per user and resource.
    async def add_vote(self, resource_id: str, user: str, score: int) -> None: ...

    async def votes(self, resource_id: str) -> dict[str, int]: ...

    # Impressions: counted on the request path, folded into resources by a periodic task.
    async def record_impressions(self, resource_id: str, count: int = 1) -> None: ...

    async def pending_impressions(self) -> dict[str, int]:
        """Counts recorded but not yet folded in."""
        ...

    async def claim_impressions(self, batch_id: str) -> dict[str, int]:
        """Move every pending count into batch `batch_id` and return the batch. Calling it again
        with the same id returns the same batch (a re-run continues, never double counts)."""
        ...

    async def apply_impressions(self, batch_id: str) -> dict[str, int]:
        """Add the batch to each resource's `impressions` total exactly once (atomically per
        resource), then delete the batch; returns what was applied by this call."""
        ...

    async def open_impression_batches(self) -> list[str]:
        """Batches claimed but not fully applied: a sync that died mid-way leaves one, and the
        next sync applies it (applying is exactly-once, so sharing a batch is safe)."""
        ...

    # Sessions: live audio connections; expired ones are removed by cleanup_sessions.
    async def touch_session(self, session_id: str, *, ttl: float, data: dict[str, Any]) -> None:
        """Create or extend the session to expire ttl seconds from now."""
        ...

    async def sessions(self) -> dict[str, dict[str, Any]]:
        """session id -> {"data": ..., "expires_at": unix seconds}."""
        ...

    async def delete_sessions(self, session_ids: Iterable[str]) -> int: ...

    # Notifications: an outbox, one entry per notification id (a retry never sends twice).
    async def add_notification(self, notification_id: str, notification: dict[str, Any]) -> bool:
        """Append to the recipient's outbox; False when this id was already added."""
        ...

    async def notifications(self, recipient: str, limit: int = 50) -> list[dict[str, Any]]:
        """The recipient's newest notifications first."""
        ...

    async def close(self) -> None: ...


_lock = threading.Lock()
_data: DomainData | None = None


def create_domain_data(settings: Settings) -> DomainData:
    """Memory or Redis, following the same choice as the task record store."""
    if settings.resolved_store == "redis":
        from app.core.redis_client import PoolLimits
        from app.tasks.data.redis import RedisDomainData

        assert settings.store_redis_url is not None
        return RedisDomainData(
            settings.store_redis_url,
            prefix=settings.key_prefix,
            limits=PoolLimits.from_settings(settings),
        )
    from app.tasks.data.memory import MemoryDomainData

    return MemoryDomainData()


def configure_domain_data(settings: Settings | None) -> DomainData | None:
    """Install the process-wide instance built from settings (None forgets it)."""
    global _data
    with _lock:
        _data = create_domain_data(settings) if settings is not None else None
        return _data


def get_domain_data() -> DomainData:
    """The process-wide instance; built from the environment on first use."""
    global _data
    with _lock:
        if _data is None:
            _data = create_domain_data(Settings())
        return _data
