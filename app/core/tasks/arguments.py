"""Checks submit() arguments against the task's signature and round-trips them through JSON.

Both planes must see identical values: a worker receives the task's arguments as JSON, so the
in-process runner gets the same JSON-decoded copies. Anything that would change on the way
(tuples, sets, datetimes, objects) is refused up front instead of surprising a task later.
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from app.core.tasks.errors import InvalidTaskArgs
from app.core.tasks.models import TaskSpec


def normalise_arguments(
    spec: TaskSpec, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """JSON-safe copies of args and kwargs that fit spec's signature.

    Raises InvalidTaskArgs naming the problem: wrong count, unknown keyword, a value whose type
    does not match the annotation (strictly: "5" is not an int), or a value JSON cannot carry.
    """
    try:
        encoded = json.dumps([list(args), kwargs], allow_nan=False)
    except (TypeError, ValueError) as exc:
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
    except Exception:  # unresolved forward references: fall back to count-only checking
        hints = {}
    adapters = {
        parameter.name: TypeAdapter(hints[parameter.name])
        for parameter in parameters
        if parameter.name in hints
    }
    return signature, adapters
