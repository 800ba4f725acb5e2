"""GET /metrics and the HTTP request metrics.

/metrics serves app/core/metrics_exposition.py's registry: every api process of the pod when
PROMETHEUS_MULTIPROC_DIR is set (`tasklane serve --workers N` sets it), else this process.
Importing app.core.tasks.metrics registers tasklane's own series, so they are exposed even in
single mode, where nothing else may have imported them yet.

HttpMetrics is pure ASGI (no BaseHTTPMiddleware: it must not buffer streamed bodies or break
BackgroundTasks). The `handler` label is the route *template* (`/api/tasks/{task_id}`), never
the raw path, so label cardinality stays bounded whatever clients send. A request that never
reached a route is labelled `<unmatched>`: an unknown path, or a request refused before routing
(401 from TokenGuard, 413 from BodySizeLimit; its status label still tells it apart).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics_exposition import render_latest
from app.core.tasks import metrics as task_metrics
from app.core.tasks.hooks import Children

router = APIRouter(tags=["metrics"])

UNMATCHED = "<unmatched>"


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Every metric of this pod's api processes in Prometheus' text format.

    tasklane_rate_delayed is read from the rate limiter now (one Redis call when a task has a
    limit), so every api process answers the same count for the whole deployment.
    """
    manager = getattr(request.app.state, "manager", None)
    if manager is not None and manager.rate_limits is not None:
        await manager.rate_limits.refresh_gauge(manager.registry)
    body, content_type = await run_in_threadpool(render_latest)
    return Response(body, media_type=content_type)


class HttpMetrics:
    """Counts each HTTP request and times it until its last body byte is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._requests = Children(task_metrics.HTTP_REQUESTS)
        self._duration = Children(task_metrics.HTTP_REQUEST_DURATION)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            handler = _handler(scope)
            method = scope["method"]
            self._requests(method, handler, str(status)).inc()
            self._duration(method, handler).observe(time.perf_counter() - began)


def _handler(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED
