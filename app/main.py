"""The FastAPI application: `uvicorn app.main:create_app --factory` (or `tasklane serve`).

The lifespan owns the task system: it builds the TaskManager from Settings, installs it as the
process-wide manager (so the guide's `get_task_manager()` calls find it), starts the runner and,
in single mode, the local scheduler. Shutdown drains running tasks for TASKLANE_SHUTDOWN_GRACE
seconds and settles the rest as FAILURE Interrupted, so none is left STARTED.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.examples import router as examples_router
from app.api.health import router as health_router
from app.api.limits import BodySizeLimit
from app.api.metrics import HttpMetrics
from app.api.metrics import router as metrics_router
from app.api.resources import router as resources_router
from app.api.tasks import router as tasks_router
from app.api.ws import router as ws_router
from app.config import Settings
from app.core.tasks import build_task_manager, set_task_manager
from app.core.tasks.handoff import HandoffGuard
from app.core.tasks.scheduler import LocalScheduler
from app.logs import configure_logging
from app.tasks.data import configure_domain_data
from app.tasks.schedule import SCHEDULE


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app configured by settings (default: from the environment).

    Raises ValueError naming the variable when the configuration cannot work.
    """
    settings = settings or Settings()
    settings.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)
        manager = build_task_manager(settings)
        set_task_manager(manager)
        domain_data = configure_domain_data(settings)
        scheduler: LocalScheduler | None = None
        try:
            await manager.start()
            if settings.scheduler_enabled:
                scheduler = LocalScheduler(manager, SCHEDULE)
                await scheduler.start()
            app.state.manager = manager
            app.state.scheduler = scheduler
            # Everything imported and built so far lives as long as the process: keep it out
            # of the cyclic GC's scans, whose full passes otherwise stall every request (p99).
            gc.freeze()
            yield
        finally:
            if scheduler is not None:
                await scheduler.stop()
            await manager.stop(settings.shutdown_grace)
            if domain_data is not None:
                await domain_data.close()
            set_task_manager(None)
            configure_domain_data(None)
            app.state.manager = None

    app = FastAPI(
        title="tasklane",
        summary="One TaskManager API for FastAPI background work.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = None

    install_error_handlers(app)
    # Added last = outermost: an oversized body is refused before anything else runs, and
    # HttpMetrics, outside it, still counts that refusal.
    app.add_middleware(HandoffGuard)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics)

    app.include_router(tasks_router)
    app.include_router(examples_router)
    app.include_router(resources_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(ws_router)
    return app
