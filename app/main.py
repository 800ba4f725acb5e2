"""The FastAPI application: `uvicorn app.main:app`, `uvicorn app.main:create_app --factory`, or
`tasklane serve` (the factory, once per worker process).

The lifespan owns the task system: it builds the TaskManager from Settings, installs it as the
process-wide manager (so the guide's `get_task_manager()` calls find it), starts the runner and,
in single mode, the local scheduler. Shutdown drains running tasks for TASKLANE_SHUTDOWN_GRACE
seconds and settles the rest as FAILURE Interrupted, so none is left STARTED. A start-up that
fails on a setting (TASKLANE_TASK_MODULES) or an unreachable Redis ends in one line naming the
variable, not a traceback (app/startup.py).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from pydantic import ValidationError

from app.api.auth import install_token_guard, warn_if_open
from app.api.errors import install_error_handlers
from app.api.examples import router as examples_router
from app.api.handoff import HandoffGuard
from app.api.health import router as health_router
from app.api.limits import BodySizeLimit
from app.api.methods import HeadAsGet, method_not_allowed
from app.api.metrics import HttpMetrics
from app.api.metrics import router as metrics_router
from app.api.resources import router as resources_router
from app.api.tasks import router as tasks_router
from app.api.ws import router as ws_router
from app.config import Settings
from app.core.redis_client import redact
from app.core.tasks import set_task_manager
from app.core.tasks.errors import StoreUnavailable
from app.core.tasks.scheduler import LocalScheduler
from app.logs import configure_logging
from app.startup import OneLineStartupFailure, StartupFailed
from app.tasks.data import configure_domain_data
from app.tasks.schedule import SCHEDULE
from app.wiring import build_task_manager


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app configured by settings (default: from the environment).

    Raises ValueError naming the variable when the configuration cannot work.
    """
    settings = settings or Settings()
    settings.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)
        warn_if_open(settings)
        try:
            manager = build_task_manager(settings)
        except ValueError as exc:  # a setting that cannot work, named in the message
            raise StartupFailed(f"cannot start: {exc}") from exc
        set_task_manager(manager)
        domain_data = configure_domain_data(settings)
        scheduler: LocalScheduler | None = None
        try:
            try:
                await manager.start()
                if settings.scheduler_enabled:
                    scheduler = LocalScheduler(manager, SCHEDULE)
                    await scheduler.start()
            except StoreUnavailable as exc:
                raise StartupFailed(_unreachable(settings, exc)) from exc
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
    app.add_exception_handler(405, method_not_allowed)
    app.add_middleware(OneLineStartupFailure)  # sees the lifespan only; its place is irrelevant
    # Added last = outermost: a request without the token is refused before anything else
    # runs (its body unread), then an oversized body; HttpMetrics, outside all of them, counts
    # those refusals (and labels a HEAD as HEAD).
    app.add_middleware(HandoffGuard)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_token_guard(app, settings)
    app.add_middleware(HeadAsGet)
    app.add_middleware(HttpMetrics)

    app.include_router(tasks_router)
    app.include_router(examples_router)
    app.include_router(resources_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(ws_router)
    return app


def _unreachable(settings: Settings, exc: StoreUnavailable) -> str:
    url = redact(settings.store_redis_url or "")
    cause = exc.__cause__ or exc
    return (
        f"cannot start: Redis at {settings.store_redis_variable}={url} does not answer "
        f"({type(cause).__name__}: {cause})"
    )


def _module_app() -> FastAPI:
    """The app `uvicorn app.main:app` (and any tool expecting a module-level app) looks for,
    built from the environment.

    Tools import this module to find `app` (and code imports it for create_app), so a
    configuration error must not break the import: it becomes an app whose start-up fails
    with that error's message, which names the variable to fix.
    """
    try:
        return create_app()
    except (ValueError, ValidationError) as exc:
        problem = str(exc)

        def refuse_to_start(_: FastAPI) -> AbstractAsyncContextManager[None]:
            raise StartupFailed(f"cannot start: {problem}")

        broken = FastAPI(title="tasklane", lifespan=refuse_to_start)
        broken.add_middleware(OneLineStartupFailure)
        return broken


app = _module_app()
