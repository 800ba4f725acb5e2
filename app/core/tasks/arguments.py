"""Checks submit() arguments against the task's signature and round-trips them through JSON.

Both planes must see identical values: a worker receives the task's arguments as JSON, so the
in-process runner gets the same JSON-decoded copies. Anything that would change on the way
(tuples, sets, datetimes, objects) is refused up front instead of surprising a task later.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from app.core.tasks.errors import ArgumentsTooLarge, InvalidTaskArgs
from app.core.tasks.models import TaskSpec

log = logging.getLogger(__name__)

#: Deeper JSON than this is refused: serializers' recursion limits would make a stored record
#: unreadable (every later read of it, and every listing containing it, would fail).
MAX_NESTING = 100

#: Compact and ASCII-escaped, NaN refused: the JSON the Redis store writes, so a measured size
#: is what the values take there (and, for ASCII text, about what they take in memory).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: The same JSON from the C encoder built once, without the cycle check: json_size() measures
#: values already checked (copied plain), at half the cost of JSONEncoder.encode per call.
_C_ENCODE = (
    json.encoder.c_make_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None
    else None
)


def json_size(value: object) -> int:
    """Characters of value as compact JSON (the arguments' measure for TASKLANE_MAX_ARGS_BYTES).

    For checked values (JSON-plain, acyclic). Raises TypeError or ValueError for a value JSON
    cannot carry, RecursionError for a cyclic one.
    """
    if _C_ENCODE is None:
        return len(_ENCODER.encode(value))
    return sum(map(len, _C_ENCODE(value, 0)))


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
    spec: TaskSpec,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    *,
    max_bytes: int | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """JSON-safe copies of args and kwargs that fit spec's signature.

    Raises InvalidTaskArgs naming the problem: wrong count, unknown keyword, a value whose type
    does not match the annotation (strictly: "5" is not an int), or a value JSON cannot carry;
    ArgumentsTooLarge (a subclass) when `[args, kwargs]` as compact JSON (json_size) is longer
    than max_bytes.
    """
    # Fast path: plain JSON values copied in one walk and checked against a per-spec plan.
    # It only ever says yes; on any doubt the full check below runs and names the problem.
    json_args = plain_json_copy(args)
    if json_args is not NOT_PLAIN:
        json_kwargs = plain_json_copy(kwargs)
        if json_kwargs is not NOT_PLAIN and _plan_of(spec).accepts(json_args, json_kwargs):
            if max_bytes is not None:
                # The one serialisation of this path (C speed, about as fast as the copy).
                _check_size(spec, json_size([json_args, json_kwargs]), max_bytes)
            return json_args, json_kwargs
    return _checked_arguments(spec, args, kwargs, max_bytes=max_bytes)


def _check_size(spec: TaskSpec, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ArgumentsTooLarge(spec.name, size, max_bytes)


def _checked_arguments(
    spec: TaskSpec,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    *,
    max_bytes: int | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """normalise_arguments() the thorough way: a JSON round trip, then Signature.bind."""
    problem = storable_problem([list(args), kwargs])
    if problem is not None:
        raise InvalidTaskArgs(spec.name, problem)
    try:
        encoded = _ENCODER.encode([list(args), kwargs])
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidTaskArgs(spec.name, f"arguments must be JSON values ({exc})") from None
    if max_bytes is not None:
        _check_size(spec, len(encoded), max_bytes)  # before parsing what is refused anyway
    json_args, json_kwargs = json.loads(encoded)
    if json_args != list(args) or json_kwargs != kwargs:
        raise InvalidTaskArgs(
            spec.name, "arguments change in a JSON round-trip (use lists, not tuples or sets)"
        )

    signature, adapters, _ = _signature_of(spec)
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
def _signature_of(
    spec: TaskSpec,
) -> tuple[inspect.Signature, dict[str, TypeAdapter[Any]], dict[str, Any]]:
    """The callable's signature without the context parameter, a validator per annotation, and
    the annotations themselves."""
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
    return signature, adapters, hints


@lru_cache(maxsize=512)
def _plan_of(spec: TaskSpec) -> ArgumentPlan:
    return ArgumentPlan.build(*_signature_of(spec))


# -- the fast path ---------------------------------------------------------------------------

#: What plain_json_copy() returns for a value it will not vouch for.
NOT_PLAIN: Any = object()

#: Ints longer than this many bits go the slow way: past sys.get_int_max_str_digits() (4300
#: digits, about 14,000 bits) json.dumps refuses them, and the slow path says so.
_MAX_INT_BITS = 10_000
#: Deeper than this the slow path decides (storable_problem counts from the [args, kwargs] pair).
_MAX_PLAIN_DEPTH = MAX_NESTING - 10


class _NotPlain(Exception):
    """Raised inside the copy walk: give up and let the slow path decide."""


def plain_json_copy(value: object) -> Any:
    """A deep copy of value (a tuple comes back a list) when it holds only exact JSON types;
    else NOT_PLAIN.

    Exact types only (str, int, float, bool, None, list, dict with str keys; no subclasses,
    no NaN or infinity, no lone surrogates): for those a JSON round trip gives an equal copy,
    so this one walk stands in for storable_problem + dumps + loads + the equality check.
    Top-level tuples are allowed because *args arrives as one.
    """
    try:
        if type(value) is tuple:
            return [_copy(item, 1) for item in value]
        return _copy(value, 0)
    except (_NotPlain, RecursionError):
        return NOT_PLAIN


def _copy(value: object, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        _check_text(value)  # type: ignore[arg-type]
        return value
    if kind is int:
        if value.bit_length() > _MAX_INT_BITS:  # type: ignore[attr-defined]
            raise _NotPlain
        return value
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise _NotPlain
        return value
    if value is None or kind is bool:
        return value
    if depth >= _MAX_PLAIN_DEPTH:
        raise _NotPlain
    if kind is list:
        return [_copy(item, depth + 1) for item in value]  # type: ignore[attr-defined]
    if kind is dict:
        copied = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _NotPlain
            _check_text(key)
            copied[key] = _copy(item, depth + 1)
        return copied
    raise _NotPlain


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _NotPlain from None


#: Annotations whose strict validation accepts a value of exactly that type (pydantic strict
#: mode: bool is no int). A value of another type still goes to pydantic, which may accept it
#: (an int for a float) or not.
_EXACT: tuple[type, ...] = (int, str, float, bool)

_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_STAR_ARGS = inspect.Parameter.VAR_POSITIONAL
_STAR_KWARGS = inspect.Parameter.VAR_KEYWORD

#: One parameter's type check: the exact type that passes without pydantic (or None), and
#: the validator for everything else.
Check = tuple[type | None, TypeAdapter[Any]]


@dataclass(frozen=True, slots=True)
class ArgumentPlan:
    """Signature.bind and the strict type checks, precomputed for one task's signature.

    accepts() is True only when Signature.bind would succeed and every validator would pass;
    it never explains a refusal (the slow path does, with Signature.bind's own message).
    """

    positional: tuple[str, ...]  # positional-or-keyword parameters, in order
    keywords: frozenset[str]  # every name a keyword may bind to
    required: frozenset[str]  # parameters without a default
    star_args: str | None
    star_kwargs: str | None
    checks: dict[str, Check]
    #: False for a parameter kind the plan does not model (positional-only): always slow.
    usable: bool

    @classmethod
    def build(
        cls,
        signature: inspect.Signature,
        adapters: dict[str, TypeAdapter[Any]],
        hints: dict[str, Any],
    ) -> ArgumentPlan:
        positional: list[str] = []
        keywords: set[str] = set()
        required: set[str] = set()
        star_args = star_kwargs = None
        usable = True
        for parameter in signature.parameters.values():
            if parameter.kind is _STAR_ARGS:
                star_args = parameter.name
                continue
            if parameter.kind is _STAR_KWARGS:
                star_kwargs = parameter.name
                continue
            if parameter.kind is _POSITIONAL:
                positional.append(parameter.name)
            elif parameter.kind is not _KEYWORD:
                usable = False
            keywords.add(parameter.name)
            if parameter.default is inspect.Parameter.empty:
                required.add(parameter.name)
        checks = {
            name: (_exact_type(hints.get(name)), adapter) for name, adapter in adapters.items()
        }
        return cls(
            positional=tuple(positional),
            keywords=frozenset(keywords),
            required=frozenset(required),
            star_args=star_args,
            star_kwargs=star_kwargs,
            checks=checks,
            usable=usable,
        )

    def accepts(self, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Would these (already JSON-plain) arguments bind and validate?"""
        positional = self.positional
        if not self.usable or (len(args) > len(positional) and self.star_args is None):
            return False  # too many positional arguments
        bound = dict(zip(positional, args, strict=False))
        extra_kwargs: list[Any] = []
        for key, value in kwargs.items():
            if key in bound:
                return False  # given positionally and by keyword
            if key in self.keywords:
                bound[key] = value
            elif self.star_kwargs is not None:
                extra_kwargs.append(value)
            else:
                return False  # an unexpected keyword
        if not self.required <= bound.keys():
            return False  # a required argument is missing
        checks = self.checks
        for name, value in bound.items():
            check = checks.get(name)
            if check is not None and not _passes(check, value):
                return False
        if self.star_args is not None:
            check = checks.get(self.star_args)
            extra_args = args[len(positional) :]
            if check is not None and not all(_passes(check, item) for item in extra_args):
                return False
        if self.star_kwargs is not None:
            check = checks.get(self.star_kwargs)
            if check is not None and not all(_passes(check, item) for item in extra_kwargs):
                return False
        return True


def _exact_type(hint: object) -> type | None:
    # `is`, not `in`: an annotation need not be hashable, nor its == well behaved.
    return next((kind for kind in _EXACT if hint is kind), None)


def _passes(check: Check, value: object) -> bool:
    exact, adapter = check
    if exact is not None and type(value) is exact:
        return True
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True
