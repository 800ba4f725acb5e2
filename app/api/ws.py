"""The guide's audio WebSocket: stream audio in, get the task's progress and result back.

Protocol on /ws/audio/{resource_id}:
  client → binary frames (raw PCM16 LE mono) and/or text {"type": "chunk", "data": "<base64>"},
           then {"type": "end", "user_name": "..."} (user_name optional)
  server → {"type": "accepted", "task_id"}, {"type": "status", "status", "progress"} on each
           change (polled every POLL_INTERVAL s), then {"type": "result", ...record as
           GET /api/tasks/{task_id}/status serves it, without its args (the audio just sent)}
           and close 1000.
Errors: {"type": "error", "detail"} then close 1003 (a frame we do not understand), 1007 (bad
JSON, base64 or values), 1008 (token, then resource id: the detail and close reason say which),
1009 (more than TASKLANE_MAX_AUDIO_BYTES), 1011/1013 (the task could not be submitted; 1013:
try again later). Every refusal comes after the handshake, as a frame and a close reason: a
refused handshake reaches a browser as a bare HTTP 403, which reads like an auth failure.
A client that leaves early does not stop a submitted task; its status stays at
GET /api/tasks/{task_id}/status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, BackgroundTasks, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from app.api.auth import bearer, token_matches
from app.api.records import served
from app.core.tasks import (
    ArgumentsTooLarge,
    ExecutorUnavailable,
    InvalidTaskArgs,
    SubmitOptions,
    TasklaneError,
    get_task_manager,
)
from app.core.tasks.models import ID_RULE, is_clean_id
from app.tasks.data import get_domain_data

if TYPE_CHECKING:
    from app.config import Settings
    from app.core.tasks import TaskManager

log = logging.getLogger("tasklane.ws")

router = APIRouter(tags=["websocket"])

#: Seconds between two reads of the task record while the client waits.
POLL_INTERVAL = 0.2
#: Seconds a session lives without activity; cleanup_sessions removes it afterwards.
SESSION_TTL = 300.0
#: Longest user_name accepted in the end frame.
MAX_USER_NAME = 200


class _Reject(Exception):
    """Stop the session: tell the client why, close with code."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def handle_audio_processing(
    resource_id: str,
    audio_data: list,
    user_name: str | None = None,
    *,
    max_audio_bytes: int | None = None,
) -> str:
    """Submit process_speak_audio for the collected chunks (the guide's handler, as written,
    plus the audio limit the session enforced, which replaces TASKLANE_MAX_ARGS_BYTES).

    Nothing runs this BackgroundTasks object (no HTTP request is active on a WebSocket), so
    the task manager starts the task right away.
    """
    task_manager = get_task_manager()
    background_tasks = BackgroundTasks()
    options = None
    if max_audio_bytes is not None:
        options = SubmitOptions(max_args_bytes=audio_args_bytes(max_audio_bytes, len(audio_data)))

    task_id = await task_manager.submit(
        "process_speak_audio",
        resource_id,
        audio_data,
        user_name,
        background_tasks=background_tasks,
        options=options,
    )

    return task_id


@router.websocket("/ws/audio/{resource_id}")
async def audio_socket(websocket: WebSocket, resource_id: str) -> None:
    """One recording per connection: receive, submit, report until the task finishes.

    resource_id is checked here, after the token, rather than by a path constraint: FastAPI
    refuses a constrained path parameter before the handshake (an HTTP 403, no reason).
    """
    settings: Settings = websocket.app.state.settings
    await websocket.accept()
    try:
        presented = bearer(websocket.headers.get("authorization"))
        if not token_matches(settings, presented or websocket.query_params.get("token")):
            raise _Reject(1008, "Missing or invalid token.")
        if not is_clean_id(resource_id):
            raise _Reject(1008, f"Invalid resource id: use {ID_RULE}.")
        await _open_session(resource_id)
        chunks, user_name = await _receive_audio(websocket, settings.max_audio_bytes)
        task_id = await handle_audio_processing(
            resource_id, chunks, user_name, max_audio_bytes=settings.max_audio_bytes
        )
        # The record holds the audio now: this frame must not keep a second reference to it
        # for as long as the task runs (minutes for long audio, the whole _follow below).
        del chunks
        await _send(websocket, {"type": "accepted", "task_id": task_id})
        await _follow(websocket, get_task_manager(), task_id, settings)
    except _Reject as exc:
        await _fail(websocket, exc.code, exc.detail)
    except ExecutorUnavailable as exc:  # the runner is stopping, Redis is away, store full
        await _fail(websocket, 1013, str(exc))
    except ArgumentsTooLarge as exc:  # tiny frames: their per-chunk overhead adds up
        await _fail(websocket, 1009, str(exc))
    except InvalidTaskArgs as exc:
        await _fail(websocket, 1007, str(exc))
    except TasklaneError as exc:
        await _fail(websocket, 1011, str(exc))
    except (WebSocketDisconnect, WebSocketDisconnected):
        pass  # the client left; a submitted task runs on


def audio_args_bytes(max_audio_bytes: int, chunks: int) -> int:
    """The largest JSON the audio task's arguments take for up to max_audio_bytes of audio in
    `chunks` base64 strings: 4 characters per 3 bytes, per chunk up to 2 of padding plus its
    quotes and comma, and 4 KiB for the resource id, the user name (escaped) and the brackets."""
    return (max_audio_bytes + 2) // 3 * 4 + 5 * chunks + 4096


async def _fail(websocket: WebSocket, code: int, detail: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
        await _send(websocket, {"type": "error", "detail": detail})
        await websocket.close(code=code, reason=_close_reason(detail))


async def _open_session(resource_id: str) -> None:
    session_id = uuid.uuid4().hex
    try:
        await get_domain_data().touch_session(
            session_id, ttl=SESSION_TTL, data={"resource_id": resource_id, "kind": "audio"}
        )
    except Exception as exc:
        # Session bookkeeping only feeds cleanup; losing it must not refuse the audio.
        log.warning("could not record audio session %s: %s", session_id, exc)


async def _receive_audio(websocket: WebSocket, limit: int) -> tuple[list[str], str | None]:
    """Collect chunks until the end frame; returns (base64 chunks, user_name)."""
    chunks: list[str] = []
    total = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        raw = message.get("bytes")
        if raw is not None:
            total = _append(chunks, raw, total, limit)
            continue
        text = message.get("text")
        if text is None:
            continue
        frame = _parse_frame(text)
        kind = frame.get("type")
        if kind == "chunk":
            total = _append(chunks, _decode_chunk(frame.get("data"), total, limit), total, limit)
        elif kind == "end":
            user_name = frame.get("user_name")
            if user_name is not None and not _valid_user_name(user_name):
                raise _Reject(1007, f"user_name must be a string of at most {MAX_USER_NAME}.")
            if not chunks:
                raise _Reject(1007, "No audio was sent before the end frame.")
            return chunks, user_name
        else:
            raise _Reject(1003, f"Unknown frame type {kind!r}: expected 'chunk' or 'end'.")


def _valid_user_name(value: object) -> bool:
    if not isinstance(value, str) or len(value) > MAX_USER_NAME:
        return False
    try:
        value.encode("utf-8")  # JSON can carry a lone surrogate; a record cannot store it
    except UnicodeEncodeError:
        return False
    return True


def _append(chunks: list[str], raw: bytes, total: int, limit: int) -> int:
    if not raw:
        return total
    total += len(raw)
    if total > limit:
        raise _too_much(limit)
    chunks.append(base64.b64encode(raw).decode("ascii"))
    return total


def _parse_frame(text: str) -> dict[str, Any]:
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        raise _Reject(1007, "Text frames must be JSON objects.") from None
    if not isinstance(frame, dict):
        raise _Reject(1003, "Text frames must be JSON objects with a 'type'.")
    return frame


def _too_much(limit: int) -> _Reject:
    return _Reject(1009, f"Audio exceeds the limit of {limit} bytes.")


def _decode_chunk(data: object, total: int, limit: int) -> bytes:
    if not isinstance(data, str):
        raise _Reject(1007, "A chunk frame needs 'data': a base64 string.")
    if len(data) // 4 * 3 - 2 > limit - total:
        # Refuse before decoding: no need to allocate what will be rejected anyway.
        raise _too_much(limit)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Reject(1007, "A chunk's 'data' is not valid base64.") from None


async def _follow(
    websocket: WebSocket, manager: TaskManager, task_id: str, settings: Settings
) -> None:
    """Send status frames until the task finishes, then the result; close 1000."""
    # Listening while polling notices a client that left; frames it sends now are ignored.
    receiver = asyncio.ensure_future(websocket.receive())
    last: tuple[Any, ...] | None = None
    try:
        while True:
            record = await manager.get_result(task_id)
            if record is None:
                raise _Reject(1011, f"The record of task {task_id} expired.")
            data = served(record, manager.registry, settings)
            state = (data["status"], data["progress"])
            if state != last:
                last = state
                await _send(
                    websocket,
                    {"type": "status", "status": data["status"], "progress": data["progress"]},
                )
            if record.finished:
                data.pop("args")
                await _send(websocket, {"type": "result", **data})
                await websocket.close(code=1000)
                return
            done, _ = await asyncio.wait({receiver}, timeout=POLL_INTERVAL)
            if done:
                if receiver.result()["type"] == "websocket.disconnect":
                    return
                receiver = asyncio.ensure_future(websocket.receive())
    finally:
        receiver.cancel()
        receiver.add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    # Retrieve a late receive error so asyncio does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


async def _send(websocket: WebSocket, payload: dict[str, Any]) -> None:
    # ASCII-escaped: a task result may hold text (a lone surrogate) that UTF-8 cannot encode.
    await websocket.send_text(json.dumps(payload, separators=(",", ":")))


def _close_reason(detail: str) -> str:
    # A close frame's reason is limited to 123 bytes of UTF-8.
    encoded = detail.encode()
    return detail if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "..."
