"""Resource routes under /api/resources: read a resource, vote on it, count impressions.

The request path only records input (a vote, a pending impression count); the derived values
(rating, impression totals) are written by tasks, so a slow calculation never holds a request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from app.api.dependencies import Manager
from app.api.errors import ERRORS, MUTATING, PROTECTED
from app.api.schemas import ResourceIdPath
from app.core.tasks import ExecutorUnavailable
from app.tasks.data import get_domain_data

log = logging.getLogger("tasklane.api.resources")

router = APIRouter(prefix="/api/resources", tags=["resources"], responses=PROTECTED)


class VoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=128, description="Who votes; one vote per user")
    # strict: `true` or "5" is a client bug, not a score.
    score: int = Field(ge=1, le=5, strict=True, description="1 (worst) to 5 (best)")


class VoteSummary(BaseModel):
    resource_id: str
    votes: int = Field(description="Number of users who voted")
    average: float = Field(description="Plain mean of the scores")
    rating_task_id: str | None = Field(
        description="The calculate_rating task submitted for this vote (None if none could be)"
    )


class ImpressionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1, le=10_000, strict=True)


class ImpressionsAccepted(BaseModel):
    resource_id: str
    recorded: int = Field(description="Impressions added to the pending count")


@router.get("/{resource_id}", responses={404: ERRORS[404], 503: ERRORS[503]})
async def get_resource(resource_id: ResourceIdPath) -> dict[str, Any]:
    """The resource document: status, analysis, rating, votes, impressions."""
    resource = await get_domain_data().get_resource(resource_id)
    if resource is None:
        raise HTTPException(status_code=404, detail=f"No resource with id {resource_id!r}.")
    return resource


@router.post(
    "/{resource_id}/votes",
    status_code=201,
    responses={**MUTATING, 503: ERRORS[503]},
)
async def add_vote(
    resource_id: ResourceIdPath,
    vote: VoteRequest,
    background_tasks: BackgroundTasks,
    manager: Manager,
) -> VoteSummary:
    """Record (or replace) the user's vote, then recalculate the rating after the response."""
    data = get_domain_data()
    await data.add_vote(resource_id, vote.user, vote.score)
    scores = list((await data.votes(resource_id)).values())
    try:
        task_id: str | None = await manager.submit(
            "calculate_rating", resource_id, background_tasks=background_tasks
        )
    except ExecutorUnavailable as exc:
        # The vote is stored; the hourly calculate_all_ratings will pick it up.
        log.warning("rating not scheduled", extra={"resource_id": resource_id, "reason": str(exc)})
        task_id = None
    return VoteSummary(
        resource_id=resource_id,
        votes=len(scores),
        average=round(sum(scores) / len(scores), 4) if scores else 0.0,
        rating_task_id=task_id,
    )


@router.post(
    "/{resource_id}/impressions",
    status_code=202,
    responses={**MUTATING, 503: ERRORS[503]},
)
async def record_impressions(
    resource_id: ResourceIdPath, body: ImpressionsRequest | None = None
) -> ImpressionsAccepted:
    """Count impressions; sync_impressions_from_redis folds them into the resource later."""
    count = body.count if body is not None else 1
    await get_domain_data().record_impressions(resource_id, count)
    return ImpressionsAccepted(resource_id=resource_id, recorded=count)
