"""values.schema.json: strict (every object closed), covers every default value, and refuses
what the chart cannot honour before any template runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.helpers import CHART_DIR, render_chart, render_error

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
DEFAULTS = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
#: Helm passes a parent chart's `global` values to every subchart; refusing unknown keys there
#: would make the chart unusable as a dependency.
OPEN_BY_DESIGN = {"/properties/global"}


def _object_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind):
            yield path, node
        for key, value in node.items():
            yield from _object_nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_nodes(value, f"{path}/{index}")


def test_every_object_is_closed() -> None:
    """A misspelt value (celery.enabeld) must fail, not be ignored."""
    open_nodes = {
        path for path, node in _object_nodes(SCHEMA) if "additionalProperties" not in node
    }
    assert open_nodes == OPEN_BY_DESIGN


def _schema_at(path: list[str]) -> dict[str, Any]:
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def _value_paths(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield (*path, key)
            # Below a Kubernetes type ($ref) or a free map the schema is not by property.
            node = _schema_at(list((*path, key)))
            if "properties" in node:
                yield from _value_paths(value, (*path, key))


def test_every_default_value_is_described() -> None:
    for path in _value_paths(DEFAULTS):
        assert _schema_at(list(path)), ".".join(path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"celery": {"enabeld": True}}, "additional properties 'enabeld' not allowed"),
        ({"store": "disk"}, "/store"),
        ({"logging": {"format": "xml"}}, "/logging/format"),
        ({"celery": {"executor": "background"}}, "/celery/executor"),
        ({"celery": {"worker": {"replicas": -1}}}, "/celery/worker/replicas"),
        ({"celery": {"worker": {"concurrency": 0}}}, "/celery/worker/concurrency"),
        ({"celery": {"worker": {"queues": []}}}, "/celery/worker/queues"),
        ({"celery": {"worker": {"queues": ["a b"]}}}, "/celery/worker/queues/0"),
        ({"redis": {"external": {"url": "http://cache:6379"}}}, "/redis/external/url"),
        ({"securityContext": {"runAsUsr": 1}}, "runAsUsr"),
        ({"api": {"resources": {"limit": {"cpu": 1}}}}, "limit"),
        (
            {"tasks": {"routes": {"process_speak_audio": "gpu"}}},
            "/tasks/routes/process_speak_audio",
        ),
    ],
)
def test_schema_refuses(values: dict[str, Any], message: str) -> None:
    assert message in render_error(values)


def test_null_worker_replicas_is_the_default() -> None:
    assert DEFAULTS["celery"]["worker"]["replicas"] is None
    assert render_chart({"celery": {"worker": {"replicas": None}}})
