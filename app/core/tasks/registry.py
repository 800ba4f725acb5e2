"""The single list of what may run anywhere: @task registers a TaskSpec under a unique name.

The api, the Celery workers and beat all import the same modules, so a name means the same
function in every process. Submitting a name that is not here is refused before anything is stored.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, TypeVar

from app.core.tasks.errors import TaskModuleNotFound, UnknownTaskError
from app.core.tasks.models import DEFAULT_PRIORITY, TaskSpec, Weight, check_priority
from app.core.tasks.rate_limits import parse_rate_limit
from app.core.tasks.redaction import Redaction

F = TypeVar("F", bound=Callable[..., Any])

#: Keyword names submit() keeps for itself; a task parameter by these names could never be passed.
RESERVED_PARAMETERS = frozenset({"background_tasks", "options"})


class TaskRegistry:
    """Name → TaskSpec. Registering a second function under a taken name is an error."""

    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}

    def register(self, spec: TaskSpec) -> TaskSpec:
        existing = self._specs.get(spec.name)
        # Re-importing the same module (reload, tests) re-registers the same function under a
        # new object; allow that only when the qualified name matches.
        if (
            existing is not None
            and existing.func is not spec.func
            and _qualified(existing.func) != _qualified(spec.func)
        ):
            raise ValueError(
                f"Task name {spec.name!r} is already registered by {_qualified(existing.func)}"
            )
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> TaskSpec:
        """The spec for name.

        Raises UnknownTaskError when nothing is registered under it.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTaskError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def names(self) -> list[str]:
        return sorted(self._specs)

    def unregister(self, name: str) -> None:
        """Forget a task (tests register throwaway tasks and clean up after themselves)."""
        self._specs.pop(name, None)


#: The process-wide registry that @task writes to and every executor reads.
registry = TaskRegistry()

#: Modules whose import registers the example domain tasks.
DEFAULT_TASK_MODULES = ("app.tasks",)


def autodiscover(modules: Iterable[str] = ()) -> None:
    """Import the default task modules plus `modules` (TASKLANE_TASK_MODULES) to register them.

    Raises TaskModuleNotFound (a ValueError) when a named module does not exist. A module that
    exists but fails while importing raises its own error, traceback and all: that is a bug in
    its code, not a setting to fix.
    """
    for module in DEFAULT_TASK_MODULES:
        importlib.import_module(module)
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module != missing and not module.startswith(f"{missing}."):
                raise  # the module exists; something it imports is missing
            raise TaskModuleNotFound(module, str(exc)) from None


def task(
    name: str | None = None,
    *,
    weight: Weight = "light",
    queue: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_max: float = 300.0,
    timeout: float | None = None,
    idempotent: bool = False,
    executor: str | None = None,
    fallback: bool = True,
    takes_context: bool = False,
    terminate_safe: bool = False,
    sensitive: bool | str | Collection[str] = False,
    priority: int = DEFAULT_PRIORITY,
    rate_limit: str | float | None = None,
    rate_burst: int = 1,
    target: TaskRegistry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as a task; the function itself is returned unchanged.

    Heavy tasks default to the `heavy` queue and light ones to `light`, the two queues the
    Celery workers consume. With takes_context=True the function's first parameter receives a
    TaskContext (progress reports, cancellation checks). terminate_safe=True lets cancel kill
    a running Celery attempt instead of waiting for the task to notice ctx.cancelled().
    sensitive=True keeps every argument and the result out of API answers and log lines;
    sensitive=("name", ...) only those parameters' values (app/core/tasks/redaction.py).
    priority (0 starts first .. 9) orders the task among waiting ones in both planes when a
    call names none (SubmitOptions.priority).
    rate_limit="10/s" (Celery's syntax) caps its starts across every process together, with
    rate_burst starts allowed back to back (app/core/tasks/rate_limits.py).
    """
    if weight not in ("light", "heavy"):
        raise ValueError(f"weight must be 'light' or 'heavy', not {weight!r}")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive")
    if executor not in (None, "background", "celery"):
        raise ValueError(f"executor must be 'background', 'celery' or None, not {executor!r}")
    check_priority(priority)
    limit = None if rate_limit is None else parse_rate_limit(rate_limit, burst=rate_burst)

    def decorate(func: F) -> F:
        parameters = inspect.signature(func).parameters
        clash = RESERVED_PARAMETERS.intersection(parameters)
        if clash:
            raise ValueError(f"Task {func.__qualname__} uses reserved parameter names {clash}")
        if takes_context and not parameters:
            raise ValueError(f"Task {func.__qualname__} takes_context but has no parameter for it")
        spec = TaskSpec(
            name=name or func.__name__,
            func=func,
            weight=weight,
            queue=queue or weight,
            retries=retries,
            backoff=backoff,
            backoff_max=backoff_max,
            timeout=timeout,
            idempotent=idempotent,
            executor=executor,
            fallback=fallback,
            takes_context=takes_context,
            terminate_safe=terminate_safe,
            is_async=inspect.iscoroutinefunction(func),
            redaction=Redaction.of(func, sensitive, takes_context=takes_context),
            priority=priority,
            rate_limit=limit,
        )
        (target or registry).register(spec)
        return func

    return decorate


def _qualified(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"
