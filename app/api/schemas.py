"""Request and response bodies of the task routes: pydantic models, so the OpenAPI schema
(and the schemathesis run against it) describes exactly what the API accepts and returns."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from app.core.tasks import TaskStatus

TASK_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
TaskId = Annotated[str, Field(min_length=1, max_length=128, pattern=TASK_ID_PATTERN)]
TaskIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=TASK_ID_PATTERN)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Registered task name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    task_id: TaskId | None = Field(default=None, description="Caller-chosen id (idempotent)")
    countdown: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)


class SubmitResponse(BaseModel):
    task_id: str
    status: TaskStatus
    status_url: str


class MaintenanceResponse(BaseModel):
    task_id: str
    status_url: str


class RecalculateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: str | None = Field(default=None, min_length=1, max_length=128)


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
