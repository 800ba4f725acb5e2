"""With TASKLANE_API_TOKEN set, every POST needs `Authorization: Bearer <token>`; GETs stay open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

TOKEN = "s3cret-token"

POSTS = [
    ("/api/tasks", {"name": "calculate_rating", "args": ["r1"]}),
    ("/api/tasks/rating/recalculate", None),
    ("/api/tasks/impressions/sync", None),
    ("/api/tasks/cleanup/sessions", None),
    ("/process", {"resource_id": "r1"}),
]


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # Read from the environment, as a deployment sets it.
    monkeypatch.setenv("TASKLANE_API_TOKEN", TOKEN)
    settings = Settings(store="memory", executor="background", scheduler="off")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(("path", "body"), POSTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}, {"authorization": "Basic x"}],
)
def test_posts_without_the_token_are_401(
    client: TestClient, path: str, body: object, headers: dict[str, str]
) -> None:
    response = client.post(path, json=body, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_posts_with_the_token_are_accepted(client: TestClient, path: str, body: object) -> None:
    response = client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 202


def test_cancel_needs_the_token(client: TestClient) -> None:
    auth = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    task_id = client.post("/api/tasks/rating/recalculate", headers=auth).json()["task_id"]

    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 401
    assert client.post(f"/api/tasks/{task_id}/cancel", headers=auth).status_code in (200, 409)


@pytest.mark.parametrize("path", ["/api/tasks", "/api/tasks/executors", "/healthz", "/readyz"])
def test_gets_stay_open(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_empty_token_means_auth_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_API_TOKEN", "")
    settings = Settings(store="memory", executor="background", scheduler="off")
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/tasks/cleanup/sessions").status_code == 202


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/tasks", {"name": ""}),  # would be a 422 with the token
        ("/api/tasks", {"name": "calculate_rating", "surprise": 1}),
        ("/api/tasks/rating/recalculate", {"resource_id": ""}),
        ("/api/tasks/not an id!/cancel", None),
    ],
)
def test_the_token_is_checked_before_the_request_is_validated(
    client: TestClient, path: str, body: object
) -> None:
    assert client.post(path, json=body).status_code == 401
