"""Value objects shared by every executor: status, the task record, the spec, submit options."""

from __future__ import annotations

import dataclasses
import re
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from app.core.tasks.rate_limits import RateLimit
    from app.core.tasks.redaction import Redaction

Weight = Literal["light", "heavy"]

#: Task ids (and the API's resource ids) travel as one URL path segment, e.g. in a status_url:
#: 1-128 characters from A-Z a-z 0-9 _ . : - and not only dots, because "." and ".." are
#: dot-segments that clients and proxies normalise away (RFC 3986 5.2.4), leaving an
#: unreachable URL. Other characters would need percent-encoding, which proxies decode
#: differently. The API's schemas and TaskManager.submit() both check this one pattern.
ID_PATTERN = r"^[A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$"
ID_MAX_LENGTH = 128
#: The rule in words, for error messages.
ID_RULE = f"1-{ID_MAX_LENGTH} characters from A-Z a-z 0-9 _ . : - and not only dots"
_ID = re.compile(ID_PATTERN)


#: Priorities run 0..9 with Celery's meaning on Redis: 0 starts first (RabbitMQ's is the
#: reverse: there 9 is the highest). One scale for both planes (DESIGN.md §3).
PRIORITY_FIRST, PRIORITY_LAST = 0, 9
#: What a task that names no priority gets: the middle of the scale, so a caller can still put
#: urgent work before it (0-3) and bulk work after it (5-9): it neither jumps every queue nor
#: waits behind everything that says a number. On Celery it shares kombu's 3-5 sub-list (Q:3).
DEFAULT_PRIORITY = 4


def check_priority(priority: int) -> int:
    """priority itself when it is an int in PRIORITY_FIRST..PRIORITY_LAST.

    Raises ValueError naming the range otherwise.
    """
    if type(priority) is not int or not PRIORITY_FIRST <= priority <= PRIORITY_LAST:
        raise ValueError(
            f"priority must be an integer from {PRIORITY_FIRST} (runs first) to "
            f"{PRIORITY_LAST} (runs last), not {priority!r}"
        )
    return priority


def is_clean_id(value: str) -> bool:
    """Does value follow ID_PATTERN and ID_MAX_LENGTH (one clean URL path segment)?"""
    return len(value) <= ID_MAX_LENGTH and _ID.fullmatch(value) is not None


class TaskStatus(StrEnum):
    PENDING = "PENDING"  # accepted and recorded, not started yet
    STARTED = "STARTED"  # an executor is running it now
    RETRY = "RETRY"  # failed an attempt; another one is scheduled
    SUCCESS = "SUCCESS"  # finished; `result` holds the return value
    FAILURE = "FAILURE"  # finished with an error; `error` says which
    CANCELLED = "CANCELLED"  # stopped (or never started) because someone cancelled it

    @property
    def finished(self) -> bool:
        """True for the three final statuses, which never change again."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.CANCELLED})
WAITING_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.RETRY})


def utcnow() -> datetime:
    """Aware UTC now; every timestamp in a record is one of these."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskError:
    """A failure stored as strings, so it reads the same in every process and after JSON."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> TaskError:
        text = "".join(traceback_module.format_exception(exc))
        return cls(type=type(exc).__name__, message=str(exc), traceback=text)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What a running task last reported through ctx.progress()."""

    fraction: float
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    """The one record per task id, same shape whichever executor ran it (DESIGN.md §3)."""

    task_id: str
    name: str
    status: TaskStatus
    executor: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: TaskError | None = None
    attempts: int = 0
    progress: Progress | None = None
    submitted_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    #: Set by cancel() on a running task; the task sees it through ctx.cancelled().
    cancel_requested: bool = False
    #: 0 (starts first) .. 9; None on records written before priorities existed.
    priority: int | None = None
    #: Set while the task waits for its rate-limit slot (app/core/tasks/rate_limits.py): when
    #: it comes back to check again. Cleared when it starts.
    rate_limited_until: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished

    def replace(self, **changes: Any) -> TaskResult:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: timestamps as ISO 8601 strings, nested objects as dicts."""
        return {
            "task_id": self.task_id,
            "name": self.name,
            "status": self.status.value,
            "executor": self.executor,
            "queue": self.queue,
            "args": self.args,
            "kwargs": self.kwargs,
            "result": self.result,
            "error": dataclasses.asdict(self.error) if self.error else None,
            "attempts": self.attempts,
            "progress": dataclasses.asdict(self.progress) if self.progress else None,
            "submitted_at": _iso(self.submitted_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "worker": self.worker,
            "cancel_requested": self.cancel_requested,
            "priority": self.priority,
            "rate_limited_until": _iso(self.rate_limited_until),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        error = data.get("error")
        progress = data.get("progress")
        return cls(
            task_id=data["task_id"],
            name=data["name"],
            status=TaskStatus(data["status"]),
            executor=data.get("executor", ""),
            queue=data.get("queue", ""),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            result=data.get("result"),
            error=TaskError(**error) if error else None,
            attempts=int(data.get("attempts") or 0),
            progress=Progress(**progress) if progress else None,
            submitted_at=_parse(data.get("submitted_at")) or utcnow(),
            started_at=_parse(data.get("started_at")),
            finished_at=_parse(data.get("finished_at")),
            worker=data.get("worker"),
            cancel_requested=bool(data.get("cancel_requested", False)),
            priority=data.get("priority"),
            rate_limited_until=_parse(data.get("rate_limited_until")),
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """How one registered task may run: the registry's entry, immutable once registered."""

    name: str
    func: Callable[..., Any]
    weight: Weight = "light"
    queue: str = "light"
    retries: int = 0
    #: First retry delay in seconds; doubles each attempt, capped at backoff_max, plus jitter.
    backoff: float = 1.0
    backoff_max: float = 300.0
    timeout: float | None = None
    idempotent: bool = False
    #: Pin to one executor ("background" or "celery"); None lets the executor decide.
    executor: str | None = None
    #: May a heavy task run in-process when no worker can take it? False means 503 instead.
    fallback: bool = True
    #: Receives a TaskContext as its first argument.
    takes_context: bool = False
    #: May cancel kill a running Celery attempt (revoke with terminate)? Only for tasks whose
    #: half-done work is harmless; others stop cooperatively through ctx.cancelled().
    terminate_safe: bool = False
    is_async: bool = False
    #: Start order among waiting tasks when a call names none (@task(priority=...)).
    priority: int = DEFAULT_PRIORITY
    #: Which argument values (and whether the result) are kept out of API answers and log
    #: lines (@task(sensitive=...)); None: nothing is hidden. The record keeps the real values.
    redaction: Redaction | None = None
    #: Starts allowed across every process together (@task(rate_limit="10/s")); None: no limit.
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitOptions:
    """Per-call choices; the manager refuses one the executor cannot honour."""

    #: Caller-chosen id; re-submitting an existing id returns that record (idempotent submit).
    task_id: str | None = None
    #: Seconds to wait before the first attempt.
    countdown: float | None = None
    #: 0 (starts first) to 9, instead of the spec's; only executors with supports_priority
    #: accept it.
    priority: int | None = None
    #: Largest JSON size of this call's arguments, instead of TASKLANE_MAX_ARGS_BYTES: for a
    #: caller that bounds its data itself (the audio WebSocket: TASKLANE_MAX_AUDIO_BYTES).
    #: Never taken from an HTTP request.
    max_args_bytes: int | None = None
