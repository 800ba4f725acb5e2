"""@task registration and options, and how submit() arguments are checked (normalise_arguments)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from app.core.tasks import InvalidTaskArgs, TaskContext, UnknownTaskError
from app.core.tasks.arguments import normalise_arguments
from app.core.tasks.errors import TaskModuleNotFound
from app.core.tasks.models import TaskSpec
from app.core.tasks.registry import TaskRegistry, autodiscover, registry, task


@pytest.fixture
def local() -> TaskRegistry:
    return TaskRegistry()


def register(local: TaskRegistry, func: Any, **options: Any) -> TaskSpec:
    task(func.__name__, target=local, **options)(func)
    return local.get(func.__name__)


def test_task_defaults_to_a_light_task_on_the_light_queue(local: TaskRegistry) -> None:
    def plain(x: int) -> int:
        return x

    spec = register(local, plain)

    assert spec.func is plain
    assert (spec.weight, spec.queue, spec.retries, spec.timeout) == ("light", "light", 0, None)
    assert (spec.idempotent, spec.executor, spec.fallback) == (False, None, True)
    assert (spec.takes_context, spec.is_async) == (False, False)


def test_task_records_every_option(local: TaskRegistry) -> None:
    async def heavy(ctx: TaskContext, path: str) -> None:
        return None

    spec = register(
        local,
        heavy,
        weight="heavy",
        retries=3,
        backoff=0.5,
        backoff_max=10,
        timeout=60,
        idempotent=True,
        executor="celery",
        fallback=False,
        takes_context=True,
    )

    assert spec.weight == "heavy"
    assert spec.queue == "heavy"  # heavy tasks default to the heavy queue
    assert (spec.retries, spec.backoff, spec.backoff_max, spec.timeout) == (3, 0.5, 10, 60)
    assert (spec.idempotent, spec.executor, spec.fallback) == (True, "celery", False)
    assert (spec.takes_context, spec.is_async) == (True, True)


def test_task_uses_an_explicit_queue_and_defaults_the_name_to_the_function(
    local: TaskRegistry,
) -> None:
    @task(target=local, queue="reports")
    def build_report() -> None:
        return None

    assert local.names() == ["build_report"]
    assert local.get("build_report").queue == "reports"


def test_task_returns_the_function_unchanged(local: TaskRegistry) -> None:
    def double(x: int) -> int:
        return 2 * x

    assert task("double", target=local)(double) is double
    assert double(4) == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight": "medium"}, "weight"),
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"executor": "threads"}, "executor"),
    ],
)
def test_task_refuses_invalid_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task("never_registered", target=TaskRegistry(), **options)


@pytest.mark.parametrize("reserved", ["background_tasks", "options"])
def test_task_refuses_reserved_parameter_names(local: TaskRegistry, reserved: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def uses_reserved(x, {reserved}=None):\n    return x", namespace)

    with pytest.raises(ValueError, match="reserved parameter"):
        task("uses_reserved", target=local)(namespace["uses_reserved"])
    assert "uses_reserved" not in local


def test_task_with_context_needs_a_parameter_for_it(local: TaskRegistry) -> None:
    def no_parameters() -> None:
        return None

    with pytest.raises(ValueError, match="takes_context"):
        task("no_parameters", target=local, takes_context=True)(no_parameters)


def test_registering_another_function_under_a_taken_name_is_refused(local: TaskRegistry) -> None:
    def first() -> None:
        return None

    def second() -> None:
        return None

    task("shared_name", target=local)(first)

    with pytest.raises(ValueError, match="already registered"):
        task("shared_name", target=local)(second)
    assert local.get("shared_name").func is first


def test_reregistering_the_same_function_is_allowed(local: TaskRegistry) -> None:
    def again() -> None:
        return None

    task("again", target=local)(again)
    task("again", target=local, retries=2)(again)

    assert local.get("again").retries == 2


def test_unknown_name_raises_unknown_task_error(local: TaskRegistry) -> None:
    with pytest.raises(UnknownTaskError) as caught:
        local.get("nope")
    assert caught.value.name == "nope"
    assert "nope" not in local


def test_registry_lists_and_forgets_tasks(local: TaskRegistry) -> None:
    def b_task() -> None:
        return None

    def a_task() -> None:
        return None

    task(target=local)(b_task)
    task(target=local)(a_task)

    assert local.names() == ["a_task", "b_task"]
    assert [spec.name for spec in local] == ["a_task", "b_task"]
    local.unregister("a_task")
    local.unregister("never_there")
    assert local.names() == ["b_task"]


def test_task_without_target_registers_in_the_process_registry() -> None:
    @task("test_registry_global_probe")
    def probe() -> str:
        return "ok"

    try:
        assert registry.get("test_registry_global_probe").func is probe
    finally:
        registry.unregister("test_registry_global_probe")


# -- normalise_arguments -------------------------------------------------------------------


def typed(count: int, label: str, ratio: float = 1.0, tags: list[str] | None = None) -> None:
    return None


def variadic(first: int, *rest: int, **extra: str) -> None:
    return None


def with_context(ctx: TaskContext, resource_id: str) -> None:
    return None


def untyped(a, b=2):  # type: ignore[no-untyped-def]
    return None


@pytest.fixture
def specs(local: TaskRegistry) -> dict[str, TaskSpec]:
    register(local, typed)
    register(local, variadic)
    register(local, with_context, takes_context=True)
    register(local, untyped)
    return {name: local.get(name) for name in local.names()}


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("typed", [1, "a"], {}),
        ("typed", [1, "a", 0.5, ["x", "y"]], {}),
        ("typed", [1], {"label": "a", "tags": None}),
        ("typed", [], {"count": 3, "label": "b", "ratio": 2}),  # an int is a valid float
        ("variadic", [1, 2, 3], {"k": "v"}),
        ("variadic", [1], {}),
        ("with_context", ["res-1"], {}),
        ("untyped", [{"any": [1, None]}], {"b": "anything"}),
    ],
)
def test_arguments_that_fit_the_signature_come_back_equal(
    specs: dict[str, TaskSpec], name: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    json_args, json_kwargs = normalise_arguments(specs[name], tuple(args), kwargs)

    assert json_args == args
    assert json_kwargs == kwargs
    assert isinstance(json_args, list)


def test_arguments_are_copies_not_the_callers_objects(specs: dict[str, TaskSpec]) -> None:
    tags = ["x"]

    json_args, _ = normalise_arguments(specs["typed"], (1, "a", 1.0, tags), {})

    assert json_args[3] == tags
    assert json_args[3] is not tags


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "reason"),
    [
        ("typed", ["1", "a"], {}, "argument 'count'"),  # "1" is not an int
        ("typed", [1, 2], {}, "argument 'label'"),  # 2 is not a str
        ("typed", [True, "a"], {}, "argument 'count'"),  # a bool is not an int
        ("typed", [1.5, "a"], {}, "argument 'count'"),
        ("typed", [1, "a", 1.0, [1]], {}, "argument 'tags'"),
        ("typed", [1], {}, "missing a required argument"),
        ("typed", [1, "a", 1.0, None, "extra"], {}, "too many positional"),
        ("typed", [1, "a"], {"colour": "red"}, "unexpected keyword"),
        ("typed", [1, "a"], {"count": 2}, "multiple values"),
        ("variadic", [1, 2, "three"], {}, "argument 'rest'"),
        ("variadic", [1], {"k": 5}, "argument 'extra'"),
        ("with_context", [], {}, "missing a required argument"),
        ("with_context", ["res", "extra"], {}, "too many positional"),
        ("with_context", [], {"ctx": None, "resource_id": "r"}, "unexpected keyword"),
    ],
)
def test_arguments_that_do_not_fit_are_refused(
    specs: dict[str, TaskSpec],
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    with pytest.raises(InvalidTaskArgs, match=reason) as caught:
        normalise_arguments(specs[name], args, kwargs)
    assert caught.value.name == name


class Opaque:
    pass


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([(1, 2)], {}),  # a tuple becomes a list in JSON
        ([{1, 2}], {}),  # a set is not JSON at all
        ([Opaque()], {}),
        ([math.nan], {}),
        ([math.inf], {}),
        ([{"nested": (1,)}], {}),
        ([{1: "int key"}], {}),  # JSON object keys are strings
        ([0], {"b": b"bytes"}),
        ([0], {"b": [0, (1,)]}),
    ],
)
def test_values_that_do_not_survive_json_are_refused(
    specs: dict[str, TaskSpec], args: list[Any], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InvalidTaskArgs):
        normalise_arguments(specs["untyped"], args, kwargs)


def test_context_parameter_is_not_bound_from_the_caller(specs: dict[str, TaskSpec]) -> None:
    json_args, json_kwargs = normalise_arguments(specs["with_context"], (), {"resource_id": "r"})

    assert (json_args, json_kwargs) == ([], {"resource_id": "r"})


@pytest.mark.parametrize("module", ["tasklane_absent", "tasklane_absent.tasks", "app.absent"])
def test_autodiscover_names_a_missing_module_and_the_variable(module: str) -> None:
    with pytest.raises(TaskModuleNotFound) as missing:
        autodiscover([module])

    assert isinstance(missing.value, ValueError)  # a configuration error, like Settings.check()
    assert f"TASKLANE_TASK_MODULES names {module!r}" in str(missing.value)


def test_autodiscover_keeps_the_error_of_a_module_that_exists_but_cannot_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its missing dependency is a bug in its code: the traceback is the useful report.
    (tmp_path / "tasklane_broken_tasks.py").write_text("import tasklane_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ModuleNotFoundError) as failed:
        autodiscover(["tasklane_broken_tasks"])

    assert not isinstance(failed.value, TaskModuleNotFound)
    assert failed.value.name == "tasklane_absent_dependency"
