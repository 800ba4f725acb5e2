"""Task routes under /api/tasks: submit, list, inspect, cancel, and the guide's maintenance
triggers. Every submit hands FastAPI's BackgroundTasks to the manager, so an in-process task
starts only after the 202 response is on the wire."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request

from app.api.dependencies import Manager, status_url
from app.api.errors import ERRORS, INVALID, MUTATING, PROTECTED, ErrorBody, SafeJSONResponse
from app.api.records import served
from app.api.schemas import (
    CancelResponse,
    ExecutorsResponse,
    MaintenanceResponse,
    RecalculateRequest,
    SubmitRequest,
    SubmitResponse,
    TaskIdPath,
    TaskInfo,
    TaskList,
    TaskRecord,
)
from app.config import Settings
from app.core.tasks import (
    InvalidTaskArgs,
    SubmitOptions,
    TaskManager,
    TaskNotFound,
    TaskStatus,
)

# Keywords submit() takes for itself: a task keyword by one of these names cannot be passed
# through **kwargs (Python would raise TypeError, a 500), so the route refuses it with a 422.
_SUBMIT_KEYWORDS = frozenset(
    parameter.name
    for parameter in inspect.signature(TaskManager.submit).parameters.values()
    if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
) - {"self"}


async def _submit(
    manager: TaskManager,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    background_tasks: BackgroundTasks,
    options: SubmitOptions | None = None,
) -> str:
    manager.registry.get(name)  # an unknown name is a 404 before any problem with arguments
    clash = _SUBMIT_KEYWORDS.intersection(kwargs)
    if clash:
        raise InvalidTaskArgs(name, f"keyword(s) {sorted(clash)} are reserved by submit()")
    return await manager.submit(
        name, *args, background_tasks=background_tasks, options=options, **kwargs
    )


# -- routes ----------------------------------------------------------------------------------

router = APIRouter(prefix="/api/tasks", tags=["tasks"], responses=PROTECTED)


@router.post(
    "",
    status_code=202,
    response_model=SubmitResponse,
    responses={**ERRORS, **INVALID, **MUTATING},
)
async def submit_task(
    body: SubmitRequest,
    request: Request,
    background_tasks: BackgroundTasks,
    manager: Manager,
) -> SafeJSONResponse:
    """Submit a registered task by name; it starts after this response is sent.

    404 for an unknown name, 422 when the arguments do not fit the task's signature.
    """
    options = SubmitOptions(task_id=body.task_id, countdown=body.countdown, priority=body.priority)
    task_id = await _submit(
        manager, body.name, body.args, body.kwargs, background_tasks, options=options
    )
    status = TaskStatus.PENDING  # what submit() just wrote for a new id
    if body.task_id is not None:
        # A re-submitted id returns the existing record, which may be further along.
        record = await manager.get_result(task_id)
        if record is not None:
            status = record.status
    # Built here rather than validated again through response_model (which still documents
    # it): the three fields are already known to fit, and this is every submit's path.
    return SafeJSONResponse(
        {"task_id": task_id, "status": status.value, "status_url": status_url(request, task_id)},
        status_code=202,
    )


@router.get("", response_model=TaskList)
async def list_tasks(
    request: Request,
    manager: Manager,
    status: Annotated[TaskStatus | None, Query()] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SafeJSONResponse:
    """Recently submitted tasks, newest first, optionally filtered by status and name."""
    records = await manager.list(status=status, name=name, limit=limit)
    settings: Settings = request.app.state.settings
    return SafeJSONResponse(
        {"tasks": [served(record, manager.registry, settings) for record in records]}
    )


@router.get("/executors", response_model=ExecutorsResponse)
async def describe_executors(request: Request, manager: Manager) -> ExecutorsResponse:
    """Mode, executor and store of this process, live workers and queue lengths (scaled mode),
    and the executor each registered task would be routed to if submitted now."""
    settings: Settings = request.app.state.settings
    executor = manager.executor
    info = executor.describe()
    rate_limits = manager.rate_limits
    limits = {
        spec.name: rate_limits.limit_for(spec) if rate_limits else spec.rate_limit
        for spec in manager.registry
    }
    return ExecutorsResponse(
        mode="single" if settings.resolved_executor == "background" else "scaled",
        executor=settings.resolved_executor,
        store=settings.resolved_store,
        executors=[info],
        workers=info.get("workers", {}),
        queue_lengths=info.get("queue_lengths", {}),
        active=info.get("active", {}),
        broker_up=info.get("broker_up"),
        tasks=[
            TaskInfo(
                name=spec.name,
                weight=spec.weight,
                queue=spec.queue,
                route=executor.route_preview(spec).executor,
                retries=spec.retries,
                timeout=spec.timeout,
                idempotent=spec.idempotent,
                priority=spec.priority,
                rate_limit=None if (limit := limits[spec.name]) is None else str(limit),
                rate_burst=None if limit is None else limit.burst,
            )
            for spec in manager.registry
        ],
    )


@router.get("/{task_id}/status", name="task_status", response_model=TaskRecord, responses=ERRORS)
async def task_status(task_id: TaskIdPath, request: Request, manager: Manager) -> SafeJSONResponse:
    """The task's record; 404 for an id never submitted (or expired), never PENDING."""
    record = await manager.get_result(task_id)
    if record is None:
        raise TaskNotFound(task_id)
    return SafeJSONResponse(served(record, manager.registry, request.app.state.settings))


@router.post(
    "/{task_id}/cancel",
    response_model=CancelResponse,
    responses={
        **ERRORS,
        **MUTATING,
        409: {"model": ErrorBody, "description": "The task already finished"},
    },
)
async def cancel_task(task_id: TaskIdPath, manager: Manager) -> CancelResponse:
    """Cancel a waiting task, or ask a running one to stop; 409 once it has finished."""
    outcome, record = await manager.cancel_task(task_id)
    return CancelResponse(
        task_id=task_id, cancelled=True, outcome=outcome.value, status=record.status
    )


# -- the guide's maintenance triggers --------------------------------------------------------


async def _maintenance(
    request: Request,
    manager: TaskManager,
    background_tasks: BackgroundTasks,
    name: str,
    *args: Any,
) -> MaintenanceResponse:
    task_id = await _submit(manager, name, list(args), {}, background_tasks)
    return MaintenanceResponse(task_id=task_id, status_url=status_url(request, task_id))


@router.post(
    "/rating/recalculate",
    status_code=202,
    response_model=MaintenanceResponse,
    responses={**ERRORS, **INVALID, **MUTATING},
)
async def recalculate_ratings(
    request: Request,
    background_tasks: BackgroundTasks,
    manager: Manager,
    body: RecalculateRequest | None = None,
) -> MaintenanceResponse:
    """Recalculate one resource's rating ({"resource_id": ...}), or all of them (no body)."""
    if body is not None and body.resource_id is not None:
        return await _maintenance(
            request, manager, background_tasks, "calculate_rating", body.resource_id
        )
    return await _maintenance(request, manager, background_tasks, "calculate_all_ratings")


@router.post(
    "/impressions/sync",
    status_code=202,
    response_model=MaintenanceResponse,
    responses={**ERRORS, **MUTATING},
)
async def sync_impressions(
    request: Request, background_tasks: BackgroundTasks, manager: Manager
) -> MaintenanceResponse:
    """Fold the impression counts recorded since the last sync into the resources."""
    return await _maintenance(request, manager, background_tasks, "sync_impressions_from_redis")


@router.post(
    "/cleanup/sessions",
    status_code=202,
    response_model=MaintenanceResponse,
    responses={**ERRORS, **MUTATING},
)
async def cleanup_sessions(
    request: Request, background_tasks: BackgroundTasks, manager: Manager
) -> MaintenanceResponse:
    """Delete expired audio sessions."""
    return await _maintenance(request, manager, background_tasks, "cleanup_sessions")
