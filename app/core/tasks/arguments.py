"""Checks submit() arguments against the task's signature and round-trips them through JSON.

Both planes must see identical values: a worker receives the task's arguments as JSON, so the
in-process runner gets the same JSON-decoded copies. Anything that would change on the way
(tuples, sets, datetimes, objects) is refused up front instead of surprising a task later.
"""

from __future__ import annotations

import inspect
import json
import logging
from functools import lru_cache
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from app.core.tasks.errors import InvalidTaskArgs
from app.core.tasks.models import TaskSpec

log = logging.getLogger(__name__)

#: Deeper JSON than this is refused: serializers' recursion limits would make a stored record
#: unreadable (every later read of it, and every listing containing it, would fail).
MAX_NESTING = 100


def storable_problem(value: object) -> str | None:
    """Why a JSON value could be stored but never served again, or None when it is fine.

    JSON may carry a lone UTF-16 surrogate ("\\ud800") that no UTF-8 encoder accepts, and
    nesting deeper than a serializer's recursion limit. Iterative, so depth cannot crash it.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"values nest deeper than {MAX_NESTING} levels"
        if isinstance(item, dict):
            stack.extend((key, depth + 1) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "strings must be valid Unicode (a lone surrogate cannot be stored)"
    return None


def normalise_arguments(
    spec: TaskSpec, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """JSON-safe copies of args and kwargs that fit spec's signature.

    Raises InvalidTaskArgs naming the problem: wrong count, unknown keyword, a value whose type
    does not match the annotation (strictly: "5" is not an int), or a value JSON cannot carry.
    """
    problem = storable_problem([list(args), kwargs])
    if problem is not None:
        raise InvalidTaskArgs(spec.name, problem)
    try:
        encoded = json.dumps([list(args), kwargs], allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidTaskArgs(spec.name, f"arguments must be JSON values ({exc})") from None
    json_args, json_kwargs = json.loads(encoded)
    if json_args != list(args) or json_kwargs != kwargs:
        raise InvalidTaskArgs(
            spec.name, "arguments change in a JSON round-trip (use lists, not tuples or sets)"
        )

    signature, adapters = _signature_of(spec)
    try:
        bound = signature.bind(*json_args, **json_kwargs)
    except TypeError as exc:
        raise InvalidTaskArgs(spec.name, str(exc)) from None
    for parameter_name, value in bound.arguments.items():
        adapter = adapters.get(parameter_name)
        if adapter is None:
            continue
        kind = signature.parameters[parameter_name].kind
        values = value if kind is inspect.Parameter.VAR_POSITIONAL else [value]
        if kind is inspect.Parameter.VAR_KEYWORD:
            values = list(value.values())
        for item in values:
            try:
                adapter.validate_python(item, strict=True)
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise InvalidTaskArgs(
                    spec.name, f"argument {parameter_name!r}: {problem}"
                ) from None
    return json_args, json_kwargs


@lru_cache(maxsize=512)
def _signature_of(spec: TaskSpec) -> tuple[inspect.Signature, dict[str, TypeAdapter[Any]]]:
    """The callable's signature without the context parameter, and a validator per annotation."""
    signature = inspect.signature(spec.func)
    parameters = list(signature.parameters.values())
    if spec.takes_context:
        parameters = parameters[1:]
    signature = signature.replace(parameters=parameters)
    try:
        hints = get_type_hints(spec.func)
    except Exception as exc:  # unresolved forward references: fall back to count-only checking
        log.warning(
            "task %s: annotations cannot be resolved (%s); only the argument count is checked",
            spec.name,
            exc,
        )
        hints = {}
    adapters = {
        parameter.name: TypeAdapter(hints[parameter.name])
        for parameter in parameters
        if parameter.name in hints
    }
    return signature, adapters
