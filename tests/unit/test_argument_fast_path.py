"""normalise_arguments' fast path (plain_json_copy + the per-spec ArgumentPlan) agrees with the
thorough check (JSON round trip + Signature.bind + strict pydantic) on every input: the same
copies when both accept, the same InvalidTaskArgs message when the thorough one refuses. The
same copy stands in for the round trip of a task's result (execution._stored)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.tasks import InvalidTaskArgs, TaskContext
from app.core.tasks.arguments import (
    NOT_PLAIN,
    _checked_arguments,
    normalise_arguments,
    plain_json_copy,
    storable_problem,
)
from app.core.tasks.execution import _stored
from app.core.tasks.models import TaskSpec


def typed(count: int, label: str, ratio: float = 1.0, tags: list[str] | None = None) -> None:
    return None


def variadic(first: int, *rest: int, **extra: str) -> None:
    return None


def keyword_only(a: bool, *, flag: str, limit: int = 3) -> None:
    return None


def positional_only(a: int, /, b: str = "x") -> None:
    return None


def with_context(ctx: TaskContext, resource_id: str) -> None:
    return None


def untyped(a, b=2):  # type: ignore[no-untyped-def]
    return None


def nested(payload: dict[str, list[int]], names: list[str] | None = None) -> None:
    return None


FUNCTIONS: dict[str, tuple[Callable[..., Any], bool]] = {
    "typed": (typed, False),
    "variadic": (variadic, False),
    "keyword_only": (keyword_only, False),
    "positional_only": (positional_only, False),
    "with_context": (with_context, True),
    "untyped": (untyped, False),
    "nested": (nested, False),
}
SPECS = {
    name: TaskSpec(name=f"fast_path_{name}", func=func, takes_context=takes_context)
    for name, (func, takes_context) in FUNCTIONS.items()
}


class IntSubclass(int):
    pass


class StrSubclass(str):
    pass


def _outcome(check: Callable[[], tuple[list[Any], dict[str, Any]]]) -> object:
    try:
        json_args, json_kwargs = check()
    except InvalidTaskArgs as exc:
        return ("refused", str(exc))
    return ("accepted", json.dumps([json_args, json_kwargs]))


def assert_same_outcome(
    name: str, args: Any, kwargs: dict[str, Any], max_bytes: int | None = None
) -> None:
    spec = SPECS[name]
    fast = _outcome(lambda: normalise_arguments(spec, args, kwargs, max_bytes=max_bytes))
    thorough = _outcome(lambda: _checked_arguments(spec, args, kwargs, max_bytes=max_bytes))
    assert fast == thorough


#: Every parameter name of the functions above, and two that none has.
KEYS = st.sampled_from(
    [
        *("count", "label", "ratio", "tags", "first", "extra", "flag", "limit", "a", "b"),
        *("ctx", "resource_id", "payload", "names", "zz", "\ud800"),
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "é", IntSubclass(3), StrSubclass("s"), b"bytes"])
    | st.builds(lambda: 10**5000)  # past json's int digits limit (built: it cannot be repr'd)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(SPECS)),
    args=st.lists(VALUES, max_size=5),
    kwargs=st.dictionaries(KEYS, VALUES, max_size=4),
    as_tuple=st.booleans(),
    max_bytes=st.none() | st.integers(0, 120),
)
def test_fast_path_agrees_with_the_thorough_check(
    name: str, args: list[Any], kwargs: dict[str, Any], as_tuple: bool, max_bytes: int | None
) -> None:
    assert_same_outcome(name, tuple(args) if as_tuple else args, kwargs, max_bytes)


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("typed", [1, "a"], {}),
        ("typed", [1, "a", 2], {}),  # an int for a float: pydantic says yes
        ("typed", [True, "a"], {}),  # a bool for an int: strictly no
        ("typed", [1], {"label": "a", "count": 2}),
        ("variadic", [1, 2, 3], {"k": "v"}),
        ("variadic", [1, 2, "3"], {}),
        ("variadic", [1], {"rest": "r"}),  # the *args name, by keyword: goes to **extra
        ("keyword_only", [True], {"flag": "f"}),
        ("keyword_only", [True, "f"], {}),
        ("keyword_only", [True], {}),
        ("positional_only", [1], {"b": "y"}),
        ("positional_only", [], {"a": 1}),
        ("with_context", ["r"], {}),
        ("with_context", [], {"ctx": None, "resource_id": "r"}),
        ("nested", [{"a": [1, 2]}], {"names": ["x"]}),
        ("nested", [{"a": [1, "2"]}], {}),
        ("untyped", [[[[[]]]]], {}),
        ("untyped", [{1: "int key"}], {}),
        ("untyped", [(1, 2)], {}),
        ("untyped", [math.nan], {}),
        ("untyped", ["\ud800"], {}),
        ("untyped", [10**5000], {}),
        ("untyped", [IntSubclass(1)], {}),  # JSON turns it into a plain int: accepted
    ],
)
def test_fast_path_agrees_on_known_edges(
    name: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    assert_same_outcome(name, args, kwargs)


@pytest.mark.parametrize("depth", [5, 85, 95, 99, 100, 101, 150])
def test_fast_path_agrees_at_every_nesting_depth(depth: int) -> None:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    assert_same_outcome("untyped", [value], {})


def test_plain_json_copy_copies_and_refuses_what_json_would_change() -> None:
    tags = ["x", {"y": [1.5, None, True]}]

    copied = plain_json_copy((1, tags))

    assert copied == [1, tags]
    assert copied[1] is not tags
    assert copied[1][1] is not tags[1]
    for changed in ((1, (2,)), {1: "a"}, [math.inf], [StrSubclass("s")], {"a": {1, 2}}):
        assert plain_json_copy(changed) is NOT_PLAIN


def test_a_cyclic_value_is_refused_not_a_crash() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)

    assert plain_json_copy(cycle) is NOT_PLAIN
    with pytest.raises(InvalidTaskArgs):
        normalise_arguments(SPECS["untyped"], [cycle], {})


def _stored_the_thorough_way(value: Any) -> Any:
    problem = storable_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return json.loads(json.dumps(value, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(value=VALUES)
def test_a_result_is_stored_as_the_json_round_trip_would_store_it(value: Any) -> None:
    try:
        expected: object = ("stored", json.dumps(_stored_the_thorough_way(value)))
    except (TypeError, ValueError, RecursionError) as exc:
        expected = ("refused", type(exc))
    try:
        got: object = ("stored", json.dumps(_stored(value)))
    except (TypeError, ValueError, RecursionError) as exc:
        got = ("refused", type(exc))

    assert got == expected
