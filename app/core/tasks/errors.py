"""Every error the task system raises on purpose; the API maps each to one HTTP status."""

from __future__ import annotations

from app.core.tasks.models import ID_RULE


class TasklaneError(Exception):
    """Base of the task system's errors. Do not raise directly."""

    #: HTTP status the API answers with when this error escapes a handler.
    http_status: int = 500


class UnknownTaskError(TasklaneError, LookupError):
    """No task is registered under this name."""

    http_status = 404

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"No task named {name!r} is registered.")


class InvalidTaskArgs(TasklaneError, ValueError):
    """The arguments do not fit the task's signature, or do not survive a JSON round-trip."""

    http_status = 422

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"Invalid arguments for task {name!r}: {reason}")


class ArgumentsTooLarge(InvalidTaskArgs):
    """The arguments' JSON is longer than TASKLANE_MAX_ARGS_BYTES (checked before any write)."""

    # 413 like the request body limit: the payload is too big, whatever its shape.
    http_status = 413

    def __init__(self, name: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            name,
            f"the arguments take {size} bytes as JSON, more than TASKLANE_MAX_ARGS_BYTES="
            f"{limit} allows; pass a reference to large data (a key, a URL), not the data",
        )


class InvalidTaskId(TasklaneError, ValueError):
    """A caller-chosen task id is not one clean URL path segment (models.ID_PATTERN)."""

    http_status = 422

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"Task id {task_id[:80]!r} is invalid: use {ID_RULE}")


class TaskModuleNotFound(TasklaneError, ValueError):
    """A module named in TASKLANE_TASK_MODULES does not exist (a configuration error)."""

    def __init__(self, module: str, reason: str) -> None:
        self.module = module
        super().__init__(
            f"TASKLANE_TASK_MODULES names {module!r}, which cannot be imported ({reason}): "
            "check the spelling and that its package is installed or on PYTHONPATH"
        )


class TaskNotFound(TasklaneError, LookupError):
    """No record exists for this task id (it never existed, or its result expired)."""

    http_status = 404

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"No task with id {task_id!r} is known (never submitted, or expired).")


class TaskAlreadyFinished(TasklaneError):
    """The task has already reached a final status, so it cannot be cancelled."""

    http_status = 409

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(f"Task {task_id!r} already finished with status {status}.")


class InvalidPriority(TasklaneError, ValueError):
    """A submit's priority is not an integer from 0 (starts first) to 9."""

    http_status = 422


class UnsupportedOption(TasklaneError, ValueError):
    """The chosen executor cannot honour a submit option; refusing beats ignoring it."""

    http_status = 422

    def __init__(self, option: str, executor: str) -> None:
        self.option = option
        self.executor = executor
        super().__init__(f"The {executor} executor does not support the {option!r} option.")


class ExecutorUnavailable(TasklaneError):
    """No executor can accept the task right now (shutting down, or no worker and no fallback)."""

    http_status = 503

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"Cannot accept the task now: {reason}")


class StoreUnavailable(ExecutorUnavailable):
    """The result store (Redis) does not answer, so no record can be written or read."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the result store is unreachable ({detail})", retry_after=5)


class StoreFull(ExecutorUnavailable):
    """The memory store's unfinished records leave no room in TASKLANE_MEMORY_STORE_MAX_BYTES."""

    def __init__(self, unfinished: int, needed: int, limit: int) -> None:
        self.unfinished = unfinished
        self.needed = needed
        self.limit = limit
        super().__init__(
            f"unfinished tasks hold {unfinished} bytes of the memory store's "
            f"TASKLANE_MEMORY_STORE_MAX_BYTES={limit}, no room for {needed} more; retry once "
            "some finish (or raise the limit)",
            retry_after=5,
        )


class BrokerUnavailable(ExecutorUnavailable):
    """The Celery broker did not take the task within the publish timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the Celery broker is unreachable ({detail})", retry_after=5)


class TaskCancelled(TasklaneError):
    """Raised inside a task (ctx.raise_if_cancelled()) to stop after a cancel request."""


class TaskTimeout(TasklaneError, TimeoutError):
    """The task ran longer than its spec's timeout."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(f"Task {name!r} exceeded its timeout of {timeout:g} s.")


class Interrupted(TasklaneError):
    """The process that owned the task stopped (shutdown or crash) before the task finished."""


class InvalidTaskResult(TasklaneError, TypeError):
    """The task returned a value that cannot be stored as JSON."""
