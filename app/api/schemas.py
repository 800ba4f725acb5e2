"""Request and response bodies of the task routes: pydantic models, so the OpenAPI schema
(and the schemathesis run against it) describes exactly what the API accepts and returns."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.tasks import TaskStatus
from app.core.tasks.models import (
    ID_MAX_LENGTH,
    ID_PATTERN,
    ID_RULE,
    PRIORITY_FIRST,
    PRIORITY_LAST,
    is_clean_id,
)


def _clean_id(value: str) -> str:
    if not is_clean_id(value):
        raise ValueError(f"must be {ID_RULE}")
    return value


# Task and resource ids: one clean URL path segment each (the rule: core/tasks/models.py). The
# pattern is checked by _clean_id, for a message in words; the schema still shows it.
_ID_SCHEMA = {"pattern": ID_PATTERN}
SegmentId = Annotated[
    str,
    Field(min_length=1, max_length=ID_MAX_LENGTH, json_schema_extra=_ID_SCHEMA),
    AfterValidator(_clean_id),
]
SegmentIdPath = Annotated[
    str,
    Path(min_length=1, max_length=ID_MAX_LENGTH, json_schema_extra=_ID_SCHEMA),
    AfterValidator(_clean_id),
]
TaskId = ResourceId = SegmentId
TaskIdPath = ResourceIdPath = SegmentIdPath
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Registered task name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    task_id: TaskId | None = Field(default=None, description="Caller-chosen id (idempotent)")
    # strict: "5" or `true` is a client bug, not a delay (an int like 5 is still fine).
    countdown: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False, strict=True)
    priority: int | None = Field(
        default=None,
        ge=PRIORITY_FIRST,
        le=PRIORITY_LAST,
        strict=True,
        description="0 starts first .. 9 starts last (Celery's meaning on Redis); "
        "default: the task's own (@task(priority=...), else 4)",
    )


class SubmitResponse(BaseModel):
    task_id: str
    status: TaskStatus
    status_url: str


class MaintenanceResponse(BaseModel):
    task_id: str
    status_url: str


class RecalculateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: ResourceId | None = None


class TaskErrorInfo(BaseModel):
    type: str
    message: str
    traceback: str = Field(
        default="", description="Served only when TASKLANE_EXPOSE_TRACEBACKS is on"
    )


class ProgressInfo(BaseModel):
    fraction: float
    message: str = ""


class TaskRecord(BaseModel):
    """The task record, as TaskResult.to_dict() writes it (DESIGN.md §3).

    Documentation only: records are sent with json.dumps, not re-serialized through pydantic,
    whose depth limit is lower than what a task result may legitimately hold. A sensitive
    task's hidden values read "[redacted]" (app/core/tasks/redaction.py).
    """

    task_id: str
    name: str
    status: TaskStatus
    executor: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any = None
    error: TaskErrorInfo | None = None
    attempts: int
    progress: ProgressInfo | None = None
    submitted_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    worker: str | None = None
    cancel_requested: bool = False
    priority: int | None = Field(default=None, description="0 starts first .. 9 starts last")
    rate_limited_until: Timestamp | None = Field(
        default=None,
        description="Set while the task waits for its rate-limit slot: when it checks again",
    )


class TaskList(BaseModel):
    tasks: list[TaskRecord]


class CancelResponse(BaseModel):
    task_id: str
    cancelled: bool
    outcome: Literal["cancelled", "requested"]
    status: TaskStatus


class TaskInfo(BaseModel):
    name: str
    weight: Literal["light", "heavy"]
    queue: str
    route: str = Field(
        description="Executor the task would run on if submitted now "
        "(background | celery; unavailable: submit would answer 503)"
    )
    retries: int
    timeout: float | None
    idempotent: bool
    priority: int = Field(description="Priority of a submit that names none (0 starts first)")
    rate_limit: str | None = Field(
        default=None,
        description="Global start limit in force (TASKLANE_RATE_LIMITS override, else the "
        'declared one), in Celery\'s syntax ("10/s"); null: unlimited',
    )
    rate_burst: int | None = Field(
        default=None, description="Starts the limit allows back to back; null: unlimited"
    )


class ExecutorsResponse(BaseModel):
    mode: Literal["single", "scaled"]
    executor: str
    store: str
    executors: list[dict[str, Any]]
    workers: dict[str, int] = Field(
        default_factory=dict, description="Live Celery workers per queue (hybrid executor)"
    )
    queue_lengths: dict[str, int] = Field(
        default_factory=dict, description="Messages waiting per queue, priority lists included"
    )
    active: dict[str, int] = Field(
        default_factory=dict, description="Tasks running on workers per queue"
    )
    broker_up: bool | None = Field(
        default=None, description="Did the last read of the broker succeed? (hybrid only)"
    )
    tasks: list[TaskInfo]
