"""Rules both DomainData backends share, so memory and Redis cannot drift apart.

The `impressions` total of a resource is a counter kept beside its document and merged in on
read: it is owned by apply_impressions alone, so a task that saves a document it read earlier
can never overwrite impressions folded in meanwhile (whole-document saves drop the field).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

#: The derived field get_resource() fills in from the impressions counter.
IMPRESSIONS = "impressions"
#: How long a finished batch id is remembered, so a late re-run of its sync claims nothing.
DONE_TTL_SECONDS = 7 * 24 * 3600
#: Entries kept per recipient outbox; older ones fall off.
OUTBOX_MAX = 1000
#: How long a notification id is remembered for de-duplication.
NOTIFICATION_ID_TTL_SECONDS = 7 * 24 * 3600


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_resource(resource_id: str) -> dict[str, Any]:
    """The document a resource gets when something refers to it before anyone created it."""
    return {"id": resource_id, "status": "new", "created_at": now_iso()}


def stored_document(resource: dict[str, Any]) -> dict[str, Any]:
    """A JSON-round-tripped copy without the derived impressions field.

    Raises ValueError when the id is missing or the document is not JSON.
    """
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        raise ValueError("a resource document needs a non-empty string 'id'")
    document = json.loads(json.dumps(resource, allow_nan=False))
    document.pop(IMPRESSIONS, None)
    return document


def merged_document(
    current: dict[str, Any] | None, resource_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """current (or a new document) updated with changes; the id and impressions stay ours."""
    document = dict(current) if current is not None else new_resource(resource_id)
    document.update(changes)
    document["id"] = resource_id
    return stored_document(document)


def with_impressions(document: dict[str, Any], total: int) -> dict[str, Any]:
    return {**document, IMPRESSIONS: total}


def check_score(score: int) -> None:
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
        raise ValueError(f"a vote score must be an integer from 1 to 5, not {score!r}")


def check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"an impression count must be a positive integer, not {count!r}")


def check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"a session ttl must be positive, not {ttl!r}")
