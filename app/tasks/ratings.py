"""calculate_rating / calculate_all_ratings: a Bayesian average of each resource's votes.

The prior (C = 5 votes at mean 3.0) keeps a resource with one 5-star vote from outranking one
with hundreds of 4.8s. Both tasks only recompute from the votes, so they are idempotent.
"""

from __future__ import annotations

import logging

from app.core.tasks import TaskContext, task
from app.tasks.data import DomainData, get_domain_data
from app.tasks.data.common import now_iso

log = logging.getLogger("tasklane.tasks.ratings")

PRIOR_MEAN = 3.0
PRIOR_WEIGHT = 5


def bayesian_rating(scores: list[int]) -> float:
    """(C·m + Σscores) / (C + n), rounded to 4 decimals."""
    return round((PRIOR_WEIGHT * PRIOR_MEAN + sum(scores)) / (PRIOR_WEIGHT + len(scores)), 4)


async def _rate(data: DomainData, resource_id: str) -> dict[str, object]:
    scores = list((await data.votes(resource_id)).values())
    rating = bayesian_rating(scores)
    await data.update_resource(
        resource_id, {"rating": rating, "votes": len(scores), "rated_at": now_iso()}
    )
    return {"resource_id": resource_id, "rating": rating, "votes": len(scores)}


@task(idempotent=True)
async def calculate_rating(resource_id: str) -> dict[str, object]:
    """Store the resource's rating and vote count (creating the resource when it is new)."""
    result = await _rate(get_domain_data(), resource_id)
    log.info("rating calculated", extra=result)
    return result


@task(weight="heavy", idempotent=True, takes_context=True)
async def calculate_all_ratings(ctx: TaskContext) -> dict[str, object]:
    """Recompute every resource's rating; stops early (CANCELLED) when asked to."""
    data = get_domain_data()
    resource_ids = await data.resource_ids()
    log.info(
        "rating recalculation started",
        extra={"task_id": ctx.task_id, "resources": len(resource_ids)},
    )
    for done, resource_id in enumerate(resource_ids, start=1):
        ctx.raise_if_cancelled()
        await _rate(data, resource_id)
        if done % 100 == 0:
            await ctx.aprogress(done / len(resource_ids), f"{done} resources rated")
    log.info(
        "rating recalculation finished",
        extra={"task_id": ctx.task_id, "resources": len(resource_ids)},
    )
    return {"resources": len(resource_ids)}
