"""HTTP methods beyond what the routes declare: HEAD on every GET route, and 405 answers whose
`Allow` header lists every method the path takes.

FastAPI's routes answer exactly the methods they declare, so a load balancer probing with HEAD
got 405; and Starlette's 405 lists only the methods of the first route matching the path
(GET /api/tasks and POST /api/tasks are two routes: a DELETE was told "Allow: GET"). HeadAsGet
serves HEAD with the GET route of the same path, so every GET route, present or future, takes
HEAD with the same auth and status; the server sends its headers only (RFC 9110 9.3.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Match

from app.api.errors import SafeJSONResponse

if TYPE_CHECKING:
    from collections.abc import Iterable

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The order methods are listed in an Allow header.
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class HeadAsGet:
    """Pure ASGI middleware: a HEAD request runs as GET; the response keeps its headers
    (Content-Length included) and loses its body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # A copy: the server keeps reading its own scope, whose HEAD tells it not to expect
        # the body that Content-Length announces.
        as_get = {**scope, "method": "GET"}

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(as_get, receive, headers_only)
        finally:
            # Routing records the matched route in the scope it was given; middlewares outside
            # this one (HttpMetrics' handler label) read it from theirs.
            if "route" in as_get:
                scope["route"] = as_get["route"]


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """Every method of _ORDER that some route takes at scope's path (HEAD wherever GET is).

    Each method is tried against the routes' own matches() rather than read from their
    `methods`: FastAPI nests included routers in route objects of its own, and matching is
    the one question every kind of route answers. A 405 is rare; seven probes are cheap.
    """
    allowed = [
        method
        for method in _ORDER
        if method != "HEAD"
        and any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    if "GET" in allowed:
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return allowed


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 with an Allow header naming every method of the path, not only one route's."""
    allow = ", ".join(allowed_methods(request.app.router.routes, request.scope))
    return SafeJSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow}
    )
