"""Public surface of the task system: everything application code imports comes from here.

from app.core.tasks import get_task_manager
task_id = await get_task_manager().submit("calculate_rating", resource_id)
"""

from app.core.tasks.context import TaskContext
from app.core.tasks.current import get_task_manager, set_task_manager, set_task_manager_builder
from app.core.tasks.errors import (
    ArgumentsTooLarge,
    ExecutorUnavailable,
    InvalidTaskArgs,
    TaskAlreadyFinished,
    TaskCancelled,
    TasklaneError,
    TaskNotFound,
    UnknownTaskError,
)
from app.core.tasks.manager import TaskCall, TaskManager
from app.core.tasks.models import SubmitOptions, TaskError, TaskResult, TaskSpec, TaskStatus
from app.core.tasks.registry import registry, task

__all__ = [
    "ArgumentsTooLarge",
    "ExecutorUnavailable",
    "InvalidTaskArgs",
    "SubmitOptions",
    "TaskAlreadyFinished",
    "TaskCall",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskManager",
    "TaskNotFound",
    "TaskResult",
    "TaskSpec",
    "TaskStatus",
    "TasklaneError",
    "UnknownTaskError",
    "get_task_manager",
    "registry",
    "set_task_manager",
    "set_task_manager_builder",
    "task",
]
