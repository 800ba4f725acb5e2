"""Schemathesis-generated requests against every documented operation: none may be a 5xx.

Bounded and reproducible: MAX_EXAMPLES valid and MAX_EXAMPLES invalid requests per operation,
derandomized, no deadline (the first request pays for start-up). The app's lifespan runs on
schemathesis' own ASGI event loop, started by the first request and stopped at module teardown.
(Schemathesis' pytest plugin does not support this pytest yet, so hypothesis drives the
operation strategies directly.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.python.asgi import shutdown_lifespans

from app.config import Settings
from app.core.tasks import set_task_manager
from app.main import create_app

MAX_EXAMPLES = 25

APP = create_app(
    Settings(
        store="memory", executor="background", scheduler="off", api_token=None, shutdown_grace=1.0
    )
)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
# Invalid requests exist only for operations that take some input.
CASES = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label, operation in sorted(OPERATIONS.items())
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE
    or any(len(part) for part in (operation.path_parameters, operation.query, operation.body))
]


@pytest.fixture(scope="module", autouse=True)
def _lifespan() -> Iterator[None]:
    yield
    shutdown_lifespans()


@pytest.fixture(autouse=True)
def _app_manager() -> None:
    # tests/conftest.py forgets the process-wide manager around each test; the guide-style
    # routes (POST /process) use get_task_manager(), so point it back at the app's.
    set_task_manager(APP.state.manager)


def test_every_route_is_documented() -> None:
    assert {
        "POST /api/tasks",
        "GET /api/tasks",
        "GET /api/tasks/executors",
        "GET /api/tasks/{task_id}/status",
        "POST /api/tasks/{task_id}/cancel",
        "POST /api/tasks/rating/recalculate",
        "POST /api/tasks/impressions/sync",
        "POST /api/tasks/cleanup/sessions",
        "POST /process",
        "GET /healthz",
        "GET /readyz",
    } <= set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_no_generated_request_gets_a_server_error(label: str, mode: GenerationMode) -> None:
    @given(case=OPERATIONS[label].as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call()

        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        )
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()
