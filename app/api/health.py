"""Probes: /healthz (the process answers) and /readyz (it can accept and record tasks)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.core.tasks import TasklaneError, TaskManager

router = APIRouter(tags=["health"])

#: Seconds /readyz waits for the store before calling it unavailable.
PING_TIMEOUT = 2.0


class Health(BaseModel):
    status: Literal["ok"]


class Unavailable(BaseModel):
    status: Literal["unavailable"]
    reason: str


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: answering at all means the event loop runs."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Unavailable}})
async def readyz(request: Request) -> Health | JSONResponse:
    """Readiness: the store answers a ping and the executor accepts tasks; else 503."""
    manager: TaskManager | None = getattr(request.app.state, "manager", None)
    reason = await _unready_reason(manager)
    if reason is not None:
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return Health(status="ok")


async def _unready_reason(manager: TaskManager | None) -> str | None:
    if manager is None:
        return "the task manager is not started"
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            await manager.store.ping()
    except TimeoutError:
        return f"the result store did not answer within {PING_TIMEOUT:g} s"
    except TasklaneError as exc:
        return str(exc)
    if not manager.executor.describe().get("accepting", True):
        return f"the {manager.executor.name} executor is not accepting tasks"
    return None
