"""GET /metrics: Prometheus text exposition of this process's default registry.

Single-process for now; under several api processes the multiprocess collector takes over
(DESIGN.md §5). Importing app.core.tasks.metrics registers tasklane's own series, so they are
exposed (at zero) even in single mode, where nothing else imports them.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

import app.core.tasks.metrics  # noqa: F401 - registers the tasklane_* metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Every metric of this process in Prometheus' text format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
