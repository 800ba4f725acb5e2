"""What of a task's values may leave the store: @task(sensitive=...) → a Redaction.

A sensitive task's record keeps its real arguments and result (the worker needs them, and code
reads them through TaskManager.get_result/wait); what is *served* (HTTP and WebSocket answers,
listings) and *logged* (Celery's "received"/"succeeded" lines on workers) carries REDACTED in
place of each hidden value. Shapes stay: a list stays a list of the same length, a dict keeps
its keys, so clients and the OpenAPI schema see the same structure.

Two forms:
  - sensitive=True: every positional and keyword value and the result are hidden;
  - sensitive=("audio_chunks", ...): only those parameters' values are hidden (wherever they
    were passed, by position or keyword; naming a *args or **kwargs parameter hides every value
    it collects); the result stays visible.
An error's type and message are shown as the task raised them (operators need them): a task
must not put a secret into an exception message. The transition log (app/core/tasks/hooks.py)
writes no arguments or results at all, so it needs no redaction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.core.tasks.models import TaskResult
    from app.core.tasks.registry import TaskRegistry

#: What a hidden value is replaced with, in answers and log lines alike.
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True, kw_only=True)
class Redaction:
    """Which values of one task's records are hidden; built once, at registration."""

    #: Hide every argument and the result (sensitive=True).
    everything: bool = False
    #: Indexes into the record's args (context parameter excluded) that are hidden.
    positions: frozenset[int] = frozenset()
    #: Every positional index from here on is hidden (a named *args parameter).
    positions_from: int | None = None
    #: Keyword names that are hidden.
    names: frozenset[str] = frozenset()
    #: Keywords outside `known` are hidden (a named **kwargs parameter).
    other_names: bool = False
    known: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        func: Callable[..., Any],
        sensitive: bool | str | Collection[str],
        *,
        takes_context: bool,
    ) -> Redaction | None:
        """The Redaction for @task(sensitive=...) on func; None when nothing is hidden.

        Raises ValueError for a name that is not one of func's parameters.
        """
        if sensitive is True:
            return cls(everything=True)
        if sensitive is False or not sensitive:
            return None
        wanted = {sensitive} if isinstance(sensitive, str) else set(sensitive)
        parameters = list(inspect.signature(func).parameters.values())
        if takes_context:
            parameters = parameters[1:]  # the record's args start after the context
        by_name = {parameter.name: parameter for parameter in parameters}
        unknown = wanted - set(by_name)
        if unknown:
            raise ValueError(
                f"sensitive names {sorted(unknown)} are not parameters of {func.__qualname__}"
            )
        positions: set[int] = set()
        positions_from: int | None = None
        names: set[str] = set()
        other_names = False
        for index, parameter in enumerate(parameters):
            if parameter.name not in wanted:
                continue
            if parameter.kind is parameter.VAR_POSITIONAL:
                positions_from = index
            elif parameter.kind is parameter.VAR_KEYWORD:
                other_names = True
            else:
                if parameter.kind is not parameter.KEYWORD_ONLY:
                    positions.add(index)
                names.add(parameter.name)
        return cls(
            positions=frozenset(positions),
            positions_from=positions_from,
            names=frozenset(names),
            other_names=other_names,
            known=frozenset(by_name),
        )

    def args(self, args: list[Any]) -> list[Any]:
        """args with each hidden value replaced by REDACTED."""
        return [REDACTED if self._hides_position(index) else v for index, v in enumerate(args)]

    def kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """kwargs with each hidden value replaced by REDACTED (keys stay)."""
        return {key: REDACTED if self._hides_name(key) else v for key, v in kwargs.items()}

    def result(self, value: Any) -> Any:
        """The result as it may be shown: REDACTED for sensitive=True (None stays None)."""
        return REDACTED if self.everything and value is not None else value

    def _hides_position(self, index: int) -> bool:
        if self.everything or index in self.positions:
            return True
        return self.positions_from is not None and index >= self.positions_from

    def _hides_name(self, name: str) -> bool:
        if self.everything or name in self.names:
            return True
        return self.other_names and name not in self.known


#: For a record whose task is not registered in this process: nothing is known about its
#: values, so none is shown (fail closed).
UNKNOWN_TASK = Redaction(everything=True)


def redaction_for(name: str, registry: TaskRegistry) -> Redaction | None:
    """The Redaction of the task registered as `name` (UNKNOWN_TASK when none is)."""
    if name not in registry:
        return UNKNOWN_TASK
    return registry.get(name).redaction


def shown(record: TaskResult, registry: TaskRegistry) -> TaskResult:
    """The record as it may be served: hidden values replaced (the record itself when its task
    hides nothing)."""
    redaction = redaction_for(record.name, registry)
    if redaction is None:
        return record
    return record.replace(
        args=redaction.args(record.args),
        kwargs=redaction.kwargs(record.kwargs),
        result=redaction.result(record.result),
    )
