"""Bearer-token guard for the whole API, on when TASKLANE_API_TOKEN is set.

The one rule: with a token configured, every HTTP request needs `Authorization: Bearer
<token>` except OPEN_PATHS — the probes and /metrics (kubelets and Prometheus call them without
credentials, and they carry no task data) and the API's own description (/docs,
/openapi.json). Task records, listings, executors and workers, the domain resources: all behind
it, reads included, because a record holds the task's arguments and result.

TokenGuard is pure ASGI, outside FastAPI's routing, on purpose: FastAPI reads and parses a
request body before it solves any dependency, so a route dependency answers a malformed body
with 422 before it could say 401. Here nothing of the request is read before the check, and a
route added later is guarded without having to remember a dependency.

The WebSocket handler (app/api/ws.py) checks token_matches() itself, after accepting: it
answers with an error frame and close code 1008, and takes the token from ?token= as well
(browsers cannot set headers on a WebSocket).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from app.api.errors import SafeJSONResponse

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

    from app.config import Settings

log = logging.getLogger("tasklane.api.auth")

#: Answered without the token: liveness, readiness and metrics scrapes.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

#: The OpenAPI security scheme's name for TASKLANE_API_TOKEN.
BEARER_SCHEME = "bearerAuth"


def expected_token(settings: Settings) -> str | None:
    """The configured token, or None when auth is off (an empty value also means off)."""
    if settings.api_token is None:
        return None
    return settings.api_token.get_secret_value() or None


def token_matches(settings: Settings, presented: str | None) -> bool:
    """True when auth is off, or `presented` equals the token (constant-time comparison)."""
    expected = expected_token(settings)
    if expected is None:
        return True
    if not presented:
        return False
    return secrets.compare_digest(presented.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class TokenGuard:
    """Pure ASGI middleware: 401 with `WWW-Authenticate: Bearer` for an HTTP request outside
    open_paths that does not carry the token; anything else passes untouched."""

    def __init__(self, app: ASGIApp, *, settings: Settings, open_paths: frozenset[str]) -> None:
        self.app = app
        self.settings = settings
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in self.open_paths:
            await self.app(scope, receive, send)
            return
        if token_matches(self.settings, bearer(_header(scope, b"authorization"))):
            await self.app(scope, receive, send)
            return
        refusal = SafeJSONResponse(
            {"detail": "Missing or invalid bearer token."},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await refusal(scope, receive, send)


def install_token_guard(app: FastAPI, settings: Settings) -> None:
    """Guard `app` when a token is configured (no middleware at all otherwise). Open: OPEN_PATHS
    and the app's documentation pages."""
    if expected_token(settings) is None:
        return
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    open_paths = frozenset(OPEN_PATHS | {path for path in docs if path})
    app.add_middleware(TokenGuard, settings=settings, open_paths=open_paths)
    _describe_bearer_auth(app, open_paths)


def _describe_bearer_auth(app: FastAPI, open_paths: frozenset[str]) -> None:
    """Say in the OpenAPI schema what TokenGuard enforces: a bearer scheme required by every
    operation outside open_paths. /docs then offers "Authorize", and generated clients send the
    header. The guard is ASGI, outside FastAPI's dependency system, so the schema is amended
    here rather than derived from route dependencies."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME] = {"type": "http", "scheme": "bearer"}
        for path, operations in schema.get("paths", {}).items():
            if path in open_paths:
                continue
            for operation in operations.values():
                operation["security"] = [{BEARER_SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def warn_if_open(settings: Settings) -> None:
    """One WARNING at start-up when no token is configured: then anyone who reaches the api
    may submit and cancel tasks and read their arguments and results."""
    if expected_token(settings) is None:
        log.warning(
            "TASKLANE_API_TOKEN is not set (or empty): every endpoint is open, mutating ones "
            "(submit, cancel, votes) and task data (arguments, results) included; set "
            "TASKLANE_API_TOKEN to require 'Authorization: Bearer <token>'"
        )


def _route_path(scope: Scope) -> str:
    # The path the router matches: without the root_path a proxy mounts the app under.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
