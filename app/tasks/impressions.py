"""sync_impressions_from_redis: fold impressions counted on the request path into resources.

Exactly once, even across crashes: the batch id is the task id, so a re-run of the same task
(Celery redelivery after a worker died) claims its old batch back and applies only what is
left. Batches left open by a run that will never be retried (an in-process runner that shut
down mid-way) are finished by the next sync, under their own ids.
"""

from __future__ import annotations

import logging

from app.core.tasks import TaskContext, task
from app.tasks.data import get_domain_data

log = logging.getLogger("tasklane.tasks.impressions")


@task(weight="heavy", idempotent=True, takes_context=True)
async def sync_impressions_from_redis(ctx: TaskContext) -> dict[str, object]:
    """Claim the pending counts as batch ctx.task_id, apply it, then finish orphaned batches."""
    data = get_domain_data()
    claimed = await data.claim_impressions(ctx.task_id)
    log.info(
        "impressions claimed",
        extra={
            "task_id": ctx.task_id,
            "resources": len(claimed),
            "impressions": sum(claimed.values()),
        },
    )
    applied = await data.apply_impressions(ctx.task_id)
    totals = dict(applied)
    orphans = [batch for batch in await data.open_impression_batches() if batch != ctx.task_id]
    for batch in orphans:
        recovered = await data.apply_impressions(batch)
        log.info(
            "orphaned impression batch applied",
            extra={"task_id": ctx.task_id, "batch": batch, "impressions": sum(recovered.values())},
        )
        for resource_id, count in recovered.items():
            totals[resource_id] = totals.get(resource_id, 0) + count
    result = {
        "resources": len(totals),
        "impressions": sum(totals.values()),
        "recovered_batches": len(orphans),
    }
    log.info("impressions applied", extra={"task_id": ctx.task_id, **result})
    return result
