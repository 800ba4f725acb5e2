"""The migration guide's endpoint example, kept working as written: POST /process.

The body is the guide's free-form `data: dict`; a missing or invalid resource_id is a 422 with
a message, not the KeyError the guide's `data["resource_id"]` would turn into a 500. Valid means
what every other route accepts as a resource id (core/tasks/models.py's ID rule).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, HTTPException

from app.api.errors import ERRORS, INVALID, MUTATING, PROTECTED
from app.core.tasks import get_task_manager
from app.core.tasks.models import ID_RULE, is_clean_id

router = APIRouter(tags=["examples"], responses=PROTECTED)


@router.post(
    "/process",
    status_code=202,
    responses={**ERRORS, **INVALID, **MUTATING},
)
async def process_data(data: dict[str, Any], background_tasks: BackgroundTasks) -> dict[str, str]:
    """Recalculate data["resource_id"]'s rating after the response (the guide's example)."""
    resource_id = data.get("resource_id")
    if not isinstance(resource_id, str) or not is_clean_id(resource_id):
        raise HTTPException(status_code=422, detail=f'The body needs "resource_id": {ID_RULE}.')
    task_manager = get_task_manager()

    # Submit lightweight task
    task_id = await task_manager.submit(
        "calculate_rating", resource_id, background_tasks=background_tasks
    )

    return {"task_id": task_id}
