"""Error bodies and exception handlers: every TasklaneError becomes its own HTTP status.

The task system's errors carry `http_status`, so a handler never guesses. Bodies are
{"detail": message, "error": class name}; an ExecutorUnavailable (StoreUnavailable included)
adds `Retry-After`, because the same request will succeed once the runner or Redis is back.
Error bodies are rendered ASCII-only, and request validation errors made JSON-safe, so echoing
an input back (NaN, infinity, bytes, a lone UTF-16 surrogate) never turns a 4xx into a 500.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.core.tasks.errors import ExecutorUnavailable, TasklaneError

if TYPE_CHECKING:
    from fastapi import FastAPI, Request


# -- error bodies, as documented in the OpenAPI schema ---------------------------------------


class ErrorBody(BaseModel):
    detail: str
    error: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown task name or id"},
    503: {"model": ErrorBody, "description": "No executor can accept the task now"},
}


class Unprocessable(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="FastAPI's list of validation errors, or a message naming the problem"
    )
    error: str | None = None


#: For routes whose 422 may also come from the task system (a message, not a list).
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": Unprocessable, "description": "Invalid input"},
}
#: Every router behind the token (app/api/auth.py: all but the probes and /metrics).
PROTECTED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token"},
}
MUTATING: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "Request body too large"},
}


# -- handlers ----------------------------------------------------------------------------------


class SafeJSONResponse(JSONResponse):
    """JSONResponse with non-ASCII escaped: a lone surrogate cannot be encoded as UTF-8."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


async def tasklane_error(request: Request, exc: Exception) -> JSONResponse:
    """{"detail", "error"} with the error's own status; Retry-After when retrying can help."""
    assert isinstance(exc, TasklaneError)
    headers = None
    if isinstance(exc, ExecutorUnavailable):
        headers = {"Retry-After": str(max(int(exc.retry_after), 1))}
    return SafeJSONResponse(
        {"detail": str(exc), "error": type(exc).__name__},
        status_code=exc.http_status,
        headers=headers,
    )


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape, with echoed inputs made JSON-safe first."""
    assert isinstance(exc, RequestValidationError)
    errors = _json_safe(jsonable_encoder(exc.errors(), custom_encoder={bytes: _bytes_text}))
    return SafeJSONResponse({"detail": errors}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TasklaneError, tasklane_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _bytes_text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _json_safe(value: Any) -> Any:
    # JSONResponse renders with allow_nan=False: a NaN echoed from the input would raise there.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value
