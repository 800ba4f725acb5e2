"""In-process DomainData for the embedded single mode: plain dicts, lost on restart.

A threading.Lock (not asyncio.Lock) guards every map: no method awaits while holding it, and the
same instance is used from the app's loop, from test loops and from sync code on other threads.
Values go in and out as JSON-round-tripped copies, so a caller mutating a returned dict never
changes the stored one (the Redis backend behaves the same way by construction).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from app.tasks.data.common import (
    DONE_TTL_SECONDS,
    OUTBOX_MAX,
    check_count,
    check_score,
    check_ttl,
    merged_document,
    new_resource,
    stored_document,
    with_impressions,
)

#: Notification ids remembered for de-duplication (a retry comes within minutes, not days).
_SENT_MAX = 100_000


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class MemoryDomainData:
    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[str, dict[str, Any]] = {}
        self._impressions: dict[str, int] = {}
        self._votes: dict[str, dict[str, int]] = {}
        self._pending: dict[str, int] = {}
        self._batches: dict[str, dict[str, int]] = {}
        # batch id -> resource ids already added to their totals (the exactly-once marker).
        self._applied: dict[str, set[str]] = {}
        # batch id -> monotonic time until which the finished batch is remembered.
        self._done: dict[str, float] = {}
        self._sessions: dict[str, tuple[dict[str, Any], float]] = {}
        self._outboxes: dict[str, list[dict[str, Any]]] = {}
        # Notification ids already added, oldest first; capped like the memory ResultStore.
        self._sent: OrderedDict[str, None] = OrderedDict()

    # -- resources ---------------------------------------------------------------------------

    async def get_resource(self, resource_id: str) -> dict[str, Any] | None:
        with self._lock:
            document = self._resources.get(resource_id)
            if document is None:
                return None
            return with_impressions(_copy(document), self._impressions.get(resource_id, 0))

    async def save_resource(self, resource: dict[str, Any]) -> None:
        document = stored_document(resource)
        with self._lock:
            self._resources[document["id"]] = document

    async def update_resource(self, resource_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            document = merged_document(self._resources.get(resource_id), resource_id, changes)
            self._resources[resource_id] = document
            return with_impressions(_copy(document), self._impressions.get(resource_id, 0))

    async def resource_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._resources)

    # -- votes -------------------------------------------------------------------------------

    async def add_vote(self, resource_id: str, user: str, score: int) -> None:
        check_score(score)
        with self._lock:
            self._votes.setdefault(resource_id, {})[user] = score
            # A voted-on resource exists from then on, so calculate_all_ratings sees it.
            self._resources.setdefault(resource_id, new_resource(resource_id))

    async def votes(self, resource_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self._votes.get(resource_id, {}))

    # -- impressions -------------------------------------------------------------------------

    async def record_impressions(self, resource_id: str, count: int = 1) -> None:
        check_count(count)
        with self._lock:
            self._pending[resource_id] = self._pending.get(resource_id, 0) + count

    async def pending_impressions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pending)

    async def claim_impressions(self, batch_id: str) -> dict[str, int]:
        with self._lock:
            self._forget_expired_batches()
            if batch_id in self._done:
                return {}  # finished already: a late re-run must not claim newer counts
            if batch_id not in self._batches:
                if not self._pending:
                    return {}
                self._batches[batch_id], self._pending = self._pending, {}
                self._applied[batch_id] = set()
            return dict(self._batches[batch_id])

    async def apply_impressions(self, batch_id: str) -> dict[str, int]:
        with self._lock:
            batch = self._batches.get(batch_id, {})
            applied = self._applied.setdefault(batch_id, set())
            done_now: dict[str, int] = {}
            for resource_id, count in sorted(batch.items()):
                if resource_id in applied or count <= 0:
                    continue
                self._impressions[resource_id] = self._impressions.get(resource_id, 0) + count
                self._resources.setdefault(resource_id, new_resource(resource_id))
                applied.add(resource_id)
                done_now[resource_id] = count
            self._batches.pop(batch_id, None)
            self._applied.pop(batch_id, None)
            self._done[batch_id] = time.monotonic() + DONE_TTL_SECONDS
            return done_now

    async def open_impression_batches(self) -> list[str]:
        with self._lock:
            return sorted(self._batches)

    def _forget_expired_batches(self) -> None:
        now = time.monotonic()
        for batch_id in [b for b, until in self._done.items() if until < now]:
            del self._done[batch_id]

    # -- sessions ----------------------------------------------------------------------------

    async def touch_session(self, session_id: str, *, ttl: float, data: dict[str, Any]) -> None:
        check_ttl(ttl)
        stored = _copy(data)
        with self._lock:
            self._sessions[session_id] = (stored, time.time() + ttl)

    async def sessions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                session_id: {"data": _copy(data), "expires_at": expires_at}
                for session_id, (data, expires_at) in self._sessions.items()
            }

    async def delete_sessions(self, session_ids: Iterable[str]) -> int:
        with self._lock:
            removed = 0
            for session_id in set(session_ids):
                if self._sessions.pop(session_id, None) is not None:
                    removed += 1
            return removed

    # -- notifications -----------------------------------------------------------------------

    async def add_notification(self, notification_id: str, notification: dict[str, Any]) -> bool:
        entry = _copy(notification)
        recipient = str(entry["recipient"])
        with self._lock:
            if notification_id in self._sent:
                return False
            self._sent[notification_id] = None
            if len(self._sent) > _SENT_MAX:
                self._sent.popitem(last=False)
            outbox = self._outboxes.setdefault(recipient, [])
            outbox.insert(0, entry)
            del outbox[OUTBOX_MAX:]
            return True

    async def notifications(self, recipient: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return _copy(self._outboxes.get(recipient, [])[: max(limit, 0)])

    async def close(self) -> None:
        """Nothing to release; the data lives as long as the instance."""
