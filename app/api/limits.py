"""Limits on what a request may carry: the body size (BodySizeLimit).

A declared Content-Length above the limit is answered 413 at once, without reading a byte; one
within it needs no further check (the server frames the body by it). A body without one
(chunked) is counted while it streams in; the first chunk past the limit aborts the read with
the same 413, so a client cannot make the app hold an unbounded body.
Task arguments are checked by the task system itself (app/core/tasks/arguments.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException

from app.api.errors import SafeJSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """The request body exceeds the configured limit (raised from receive while it streams)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body exceeds the limit of {limit} bytes.")


class BodySizeLimit:
    """Pure ASGI middleware: 413 {"detail": ...} for HTTP bodies above max_bytes."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _framing(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        if declared is not None and not chunked:
            # The server frames this body by its Content-Length (bytes past it would be the
            # next request), so it cannot grow past the limit: nothing to count or wrap.
            await self.app(scope, receive, send)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, so FastAPI's body reading passes it on as a 413
                    # instead of wrapping it into a 400 "error parsing the body".
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Reached here only when no exception handler turned it into a response (an app
            # reading the body outside a route); the client still gets its 413.
            if response_started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = BodyTooLarge(self.max_bytes).detail
        refusal = SafeJSONResponse(
            {"detail": detail}, status_code=413, headers={"Connection": "close"}
        )
        await refusal(scope, receive, send)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None when absent or malformed), and whether a
    Transfer-Encoding header is present (it overrides Content-Length: RFC 9112 §6.3)."""
    length: int | None = None
    seen_length = transfer_encoding = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and not seen_length:
            seen_length = True
            try:
                length = int(value)
            except ValueError:
                length = None  # the server rejects a malformed length before we see it
        elif name == b"transfer-encoding":
            transfer_encoding = True
    return length, transfer_encoding
