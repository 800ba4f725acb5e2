"""The guide's audio WebSocket: stream a generated sine in, get status frames and the result."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.api.ws import handle_audio_processing
from app.config import Settings
from app.core.tasks import ExecutorUnavailable, get_task_manager
from app.main import create_app
from app.tasks.data import get_domain_data

RATE = 16_000
MAX_AUDIO = 64 * 1024


def sine(seconds: float, frequency: float = 440.0, amplitude: float = 0.5) -> bytes:
    """PCM16 LE mono samples of a sine wave at 16 kHz."""
    count = int(RATE * seconds)
    peak = amplitude * 32767
    samples = (round(peak * math.sin(2 * math.pi * frequency * i / RATE)) for i in range(count))
    return struct.pack(f"<{count}h", *samples)


def make_client(**overrides: Any) -> TestClient:
    values: dict[str, Any] = {
        "store": "memory",
        "executor": "background",
        "scheduler": "off",
        "api_token": None,
        "max_audio_bytes": MAX_AUDIO,
        **overrides,
    }
    settings = Settings(**values)
    return TestClient(create_app(settings))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client


def receive_until_closed(ws: Any) -> tuple[list[dict[str, Any]], int]:
    """Every JSON frame the server sends, and the close code it ends with."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frames.append(ws.receive_json())
        except WebSocketDisconnect as exc:
            return frames, exc.code


def test_binary_and_base64_chunks_end_in_a_successful_result(client: TestClient) -> None:
    audio = sine(1.0)
    half = len(audio) // 2
    with client.websocket_connect("/ws/audio/res-1") as ws:
        ws.send_bytes(audio[:half])
        ws.send_text(json.dumps({"type": "chunk", "data": base64.b64encode(audio[half:]).decode()}))
        ws.send_json({"type": "end", "user_name": "ann"})
        frames, code = receive_until_closed(ws)

    assert code == 1000
    assert frames[0]["type"] == "accepted"
    assert {frame["type"] for frame in frames[1:-1]} == {"status"}
    result = frames[-1]
    assert result["type"] == "result"
    assert result["task_id"] == frames[0]["task_id"]
    assert result["status"] == "SUCCESS", result["error"]
    assert result["name"] == "process_speak_audio"
    assert "args" not in result  # the audio itself is not echoed back
    analysis = result["result"]["analysis"]
    assert analysis["samples"] == RATE
    assert analysis["chunks"] == 2
    assert analysis["rms_dbfs"] == pytest.approx(-9.03, abs=0.1)  # 0.5 full scale sine
    assert frames[-2]["status"] == "SUCCESS"
    resource = client.get("/api/resources/res-1").json()
    assert resource["status"] == "processed"
    assert resource["processed_by"] == "ann"


def test_the_connection_records_an_audio_session(client: TestClient) -> None:
    with client.websocket_connect("/ws/audio/res-2") as ws:
        ws.send_bytes(sine(0.1))
        ws.send_json({"type": "end"})
        receive_until_closed(ws)

    sessions = asyncio.run(get_domain_data().sessions())
    assert [entry["data"] for entry in sessions.values()] == [
        {"resource_id": "res-2", "kind": "audio"}
    ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json at all", 1007),
        ("[1, 2]", 1003),
        (json.dumps({"type": "dance"}), 1003),
        (json.dumps({"type": "chunk", "data": "%%% not base64 %%%"}), 1007),
        (json.dumps({"type": "chunk", "data": 12}), 1007),
        (json.dumps({"type": "chunk"}), 1007),
        (json.dumps({"type": "end"}), 1007),  # no audio before the end
        (json.dumps({"type": "end", "user_name": 5}), 1007),
        (json.dumps({"type": "end", "user_name": "\ud800"}), 1007),  # a lone surrogate
        ("[" * 100_000, 1007),
    ],
)
def test_garbage_gets_an_error_frame_and_a_close_code(
    client: TestClient, frame: str, code: int
) -> None:
    with client.websocket_connect("/ws/audio/res-3") as ws:
        if "end" in frame and "user_name" in frame:
            ws.send_bytes(sine(0.01))
        ws.send_text(frame)
        frames, closed_with = receive_until_closed(ws)

    assert closed_with == code
    assert frames[-1]["type"] == "error"
    assert frames[-1]["detail"]
    # The server is still fine afterwards.
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("encoding", ["binary", "base64"])
def test_audio_above_the_limit_closes_with_1009(client: TestClient, encoding: str) -> None:
    chunk = b"\0" * (MAX_AUDIO // 4)
    with client.websocket_connect("/ws/audio/res-4") as ws:
        for _ in range(5):
            if encoding == "binary":
                ws.send_bytes(chunk)
            else:
                ws.send_json({"type": "chunk", "data": base64.b64encode(chunk).decode()})
        frames, code = receive_until_closed(ws)

    assert code == 1009
    assert frames == [{"type": "error", "detail": f"Audio exceeds the limit of {MAX_AUDIO} bytes."}]
    assert client.get("/api/tasks").json()["tasks"] == []


def test_one_huge_base64_chunk_is_refused_before_decoding(client: TestClient) -> None:
    with client.websocket_connect("/ws/audio/res-5") as ws:
        ws.send_json({"type": "chunk", "data": "A" * (MAX_AUDIO * 2)})
        frames, code = receive_until_closed(ws)

    assert code == 1009
    assert frames[-1]["type"] == "error"


def test_odd_audio_ends_in_a_failure_result_not_a_crash(client: TestClient) -> None:
    with client.websocket_connect("/ws/audio/res-6") as ws:
        ws.send_bytes(b"\x01\x02\x03")
        ws.send_json({"type": "end"})
        frames, code = receive_until_closed(ws)

    assert code == 1000
    assert frames[-1]["type"] == "result"
    assert frames[-1]["status"] == "FAILURE"


@pytest.mark.parametrize("expose", [False, True])
def test_the_result_frame_follows_the_status_answer_s_rules(expose: bool) -> None:
    # No traceback unless TASKLANE_EXPOSE_TRACEBACKS; no audio (the frame drops args anyway).
    with (
        make_client(expose_tracebacks=expose) as client,
        client.websocket_connect("/ws/audio/res-8") as ws,
    ):
        ws.send_bytes(b"\x01\x02\x03")
        ws.send_json({"type": "end"})
        frames, _ = receive_until_closed(ws)

    result = frames[-1]
    assert (result["type"], result["status"]) == ("result", "FAILURE")
    assert "args" not in result
    assert ("traceback" in result["error"]) is expose


def test_a_runner_that_cannot_accept_closes_with_1013(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise ExecutorUnavailable("the in-process runner is shutting down")

    monkeypatch.setattr(client.app.state.manager.executor, "dispatch", refuse)  # type: ignore[attr-defined]
    with client.websocket_connect("/ws/audio/res-9") as ws:
        ws.send_bytes(sine(0.05))
        ws.send_json({"type": "end"})
        frames, code = receive_until_closed(ws)

    assert code == 1013
    assert "shutting down" in frames[-1]["detail"]


@pytest.mark.parametrize("resource_id", ["bad%20id", "%2E%2E", "x" * 129])
def test_invalid_resource_id_is_a_close_with_a_reason_not_a_refused_handshake(
    client: TestClient, resource_id: str
) -> None:
    # A refused handshake reaches a real client as an empty HTTP 403, like an auth failure.
    with client.websocket_connect(f"/ws/audio/{resource_id}") as ws:
        frames = [ws.receive_json()]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()

    assert frames[0]["type"] == "error"
    assert frames[0]["detail"].startswith("Invalid resource id: use 1-128 characters")
    assert closed.value.code == 1008
    assert closed.value.reason == frames[0]["detail"]


def test_without_the_token_a_bad_resource_id_still_reads_as_the_auth_failure() -> None:
    with (
        make_client(api_token="tok") as client,
        client.websocket_connect("/ws/audio/bad%20id") as ws,
    ):
        frames, code = receive_until_closed(ws)

    assert (code, frames) == (1008, [{"type": "error", "detail": "Missing or invalid token."}])


@pytest.mark.parametrize(
    ("path", "headers", "accepted"),
    [
        ("/ws/audio/r", {}, False),
        ("/ws/audio/r?token=wrong", {}, False),
        ("/ws/audio/r?token=tok", {}, True),
        ("/ws/audio/r", {"Authorization": "Bearer tok"}, True),
        ("/ws/audio/r", {"Authorization": "Bearer nope"}, False),
    ],
)
def test_token_is_required_when_configured(
    path: str, headers: dict[str, str], accepted: bool
) -> None:
    with (
        make_client(api_token="tok") as client,
        client.websocket_connect(path, headers=headers) as ws,
    ):
        ws.send_bytes(sine(0.05))
        ws.send_json({"type": "end"})
        frames, code = receive_until_closed(ws)

    if accepted:
        assert (code, frames[-1]["type"]) == (1000, "result")
    else:
        assert code == 1008
        assert frames == [{"type": "error", "detail": "Missing or invalid token."}]


def test_client_leaving_early_does_not_stop_the_task(client: TestClient) -> None:
    with client.websocket_connect("/ws/audio/res-7") as ws:
        ws.send_bytes(sine(0.2))
        ws.send_json({"type": "end"})
        task_id = ws.receive_json()["task_id"]

    for _ in range(250):
        record = client.get(f"/api/tasks/{task_id}/status").json()
        if record["status"] == "SUCCESS":
            break
        time.sleep(0.02)
    assert record["status"] == "SUCCESS"


@pytest.mark.asyncio
async def test_guide_handler_runs_without_an_http_request() -> None:
    # The guide's handler outside any app: nothing runs its BackgroundTasks, the task runs anyway.
    audio = [base64.b64encode(sine(0.1)).decode()]

    task_id = await handle_audio_processing("res-8", audio, "bo")

    record = await get_task_manager().wait(task_id, timeout=10)
    assert record.status == "SUCCESS", record.error
    await get_task_manager().stop(grace=1)
