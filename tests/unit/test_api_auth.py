"""With TASKLANE_API_TOKEN set, every request but the probes, /metrics and the API docs needs
`Authorization: Bearer <token>`, checked before the body is read; without a token, start-up
warns that everything is open."""

from __future__ import annotations

import logging
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


AUTH = {"Authorization": f"Bearer {TOKEN}"}

TASK_DATA_GETS = [
    "/api/tasks",
    "/api/tasks?name=calculate_rating",
    "/api/tasks/{task_id}/status",
    "/api/tasks/executors",
    "/api/resources/r1",
]


@pytest.mark.parametrize("path", TASK_DATA_GETS)
def test_task_data_needs_the_token(client: TestClient, path: str) -> None:
    task_id = client.post(
        "/api/tasks", json={"name": "calculate_rating", "args": ["r1"]}, headers=AUTH
    )
    url = path.format(task_id=task_id.json()["task_id"])

    refused = client.get(url)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json() == {"detail": "Missing or invalid bearer token."}
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # With the token: the answer itself (the resource may not be rated yet: 404 is an answer).
    assert client.get(url, headers=AUTH).status_code in (200, 404)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"])
def test_probes_metrics_and_docs_stay_open(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_an_unknown_path_without_the_token_is_401(client: TestClient) -> None:
    # Default deny: a route added later is guarded without remembering a dependency.
    assert client.get("/api/not-a-route").status_code == 401
    assert client.get("/api/not-a-route", headers=AUTH).status_code == 404


def test_the_openapi_schema_says_which_operations_need_the_token(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    paths = schema["paths"]
    assert paths["/api/tasks"]["post"]["security"] == [{"bearerAuth": []}]
    assert paths["/api/tasks/{task_id}/status"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_without_a_token_the_schema_asks_for_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKLANE_API_TOKEN", raising=False)
    app = create_app(Settings(store="memory", executor="background", scheduler="off"))
    schema = TestClient(app).get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})


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


@pytest.mark.parametrize("path", [*(path for path, _ in POSTS), "/api/resources/r1/votes"])
@pytest.mark.parametrize("payload", [b"{", b"not json", b'{"name": 1'])
def test_a_malformed_body_without_the_token_is_401(
    client: TestClient, path: str, payload: bytes
) -> None:
    response = client.post(path, content=payload, headers={"content-type": "application/json"})

    assert response.status_code == 401


def test_a_malformed_body_with_the_token_is_still_a_422(client: TestClient) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    assert client.post("/api/tasks", content=b"{", headers=headers).status_code == 422


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("token", "warned"), [(None, True), ("", True), (TOKEN, False)])
def test_start_up_warns_when_no_token_is_configured(
    monkeypatch: pytest.MonkeyPatch, token: str | None, warned: bool
) -> None:
    monkeypatch.delenv("TASKLANE_API_TOKEN", raising=False)
    if token is not None:
        monkeypatch.setenv("TASKLANE_API_TOKEN", token)
    lines = _Lines()
    logger = logging.getLogger("tasklane.api.auth")
    logger.addHandler(lines)
    try:
        settings = Settings(store="memory", executor="background", scheduler="off")
        with TestClient(create_app(settings)):
            pass
    finally:
        logger.removeHandler(lines)

    warnings = [r for r in lines.records if r.levelno == logging.WARNING]
    if warned:
        [warning] = warnings
        assert "TASKLANE_API_TOKEN" in warning.getMessage()
        assert "open" in warning.getMessage()
    else:
        assert warnings == []
