"""HEAD on every GET route (load balancers probe with it), and 405 answers whose Allow header
lists every method of the path."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from scripts.harness.scaled_api import metric


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(store="memory", executor="background", scheduler="off", api_token=None)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def get_paths() -> list[str]:
    """Every GET route of the app, path parameters filled in."""
    app = create_app(Settings(store="memory", executor="background", scheduler="off"))
    documented = [path for path, item in app.openapi()["paths"].items() if "get" in item]
    return [re.sub(r"\{[^}]+\}", "some-id", path) for path in documented] + ["/metrics", "/docs"]


@pytest.mark.parametrize("path", get_paths())
def test_every_get_route_answers_head_with_the_get_status_and_no_body(
    client: TestClient, path: str
) -> None:
    got = client.get(path)
    head = client.head(path)

    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_head_is_counted_as_head_under_its_route(client: TestClient) -> None:
    before = metric(client, "http_requests_total", method="HEAD", handler="/healthz", status="200")
    client.head("/healthz")
    after = metric(client, "http_requests_total", method="HEAD", handler="/healthz", status="200")

    assert after == before + 1


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/tasks", "GET, HEAD, POST"),
        ("PUT", "/api/tasks/some-id/status", "GET, HEAD"),
        ("GET", "/api/tasks/some-id/cancel", "POST"),
        ("HEAD", "/api/tasks/some-id/cancel", "POST"),
        ("PATCH", "/api/resources/r1", "GET, HEAD"),
        ("GET", "/api/resources/r1/votes", "POST"),
    ],
)
def test_405_lists_every_allowed_method(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)

    assert response.status_code == 405
    assert response.headers["allow"] == allow
