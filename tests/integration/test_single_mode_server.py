"""Acceptance for `make run`: a real `tasklane serve` with no configuration at all (embedded
single mode: in-process runner, memory store, no service) answers the README's commands."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from scripts.harness.processes import ServerProcess, clean_environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path: Path = tmp_path_factory.mktemp("single") / "server.log"
    process = ServerProcess(clean_environment(), log_path)
    try:
        yield process
    finally:
        process.kill()


def wait_final(client: httpx.Client, task_id: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/api/tasks/{task_id}/status").json()
        if record["status"] in ("SUCCESS", "FAILURE", "CANCELLED"):
            return record
        assert time.monotonic() < deadline, f"task {task_id} still {record['status']}"
        time.sleep(0.05)


def test_bare_recalculate_post_is_accepted_and_reaches_success(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        # Exactly `curl -X POST localhost:8000/api/tasks/rating/recalculate`: no body at all.
        response = client.post("/api/tasks/rating/recalculate")
        assert response.status_code == 202
        record = wait_final(client, response.json()["task_id"])

        executors = client.get("/api/tasks/executors").json()
    assert record["status"] == "SUCCESS"
    assert record["name"] == "calculate_all_ratings"
    assert executors["mode"] == "single"
    assert executors["store"] == "memory"


def test_websocket_audio_task_completes_with_no_request_attached(server: ServerProcess) -> None:
    samples = [int(8000 * math.sin(2 * math.pi * 220 * i / 16000)) for i in range(8000)]
    pcm = struct.pack(f"<{len(samples)}h", *samples)

    async def stream() -> list[dict[str, object]]:
        url = server.url.replace("http://", "ws://") + "/ws/audio/single-mode-res"
        async with websockets.connect(url) as socket:
            await socket.send(pcm[:8000])
            await socket.send(
                json.dumps({"type": "chunk", "data": base64.b64encode(pcm[8000:]).decode()})
            )
            await socket.send(json.dumps({"type": "end", "user_name": "ada"}))
            return [json.loads(frame) async for frame in socket]

    frames = asyncio.run(asyncio.wait_for(stream(), 30))

    assert frames[0]["type"] == "accepted"
    assert frames[-1]["type"] == "result"
    assert frames[-1]["status"] == "SUCCESS"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        resource = client.get("/api/resources/single-mode-res").json()
    assert resource["status"] == "processed"
    assert resource["analysis"]["duration_s"] == pytest.approx(0.5)


def test_head_probes_get_headers_only_and_the_connection_stays_usable(
    server: ServerProcess,
) -> None:
    # One keep-alive connection: had the server sent the body Content-Length announces, or
    # refused the missing one, the GET after the HEADs would read garbage or fail.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        heads = [client.head(path) for path in ("/healthz", "/api/tasks", "/metrics")]
        after = client.get("/healthz")

    assert [(r.status_code, r.content) for r in heads] == [(200, b"")] * 3
    assert int(heads[0].headers["content-length"]) == len(after.content)
    assert after.status_code == 200
    assert "RuntimeError" not in server.log()


def test_a_bad_websocket_resource_id_is_a_close_with_a_reason_not_an_http_403(
    server: ServerProcess,
) -> None:
    async def connect() -> tuple[list[dict[str, object]], int | None, str | None]:
        url = server.url.replace("http://", "ws://") + "/ws/audio/bad%20id"
        frames: list[dict[str, object]] = []
        async with websockets.connect(url) as socket:  # a refused handshake raises here
            with contextlib.suppress(websockets.exceptions.ConnectionClosedError):
                async for frame in socket:  # ends in the error above on a close other than 1000
                    frames.append(json.loads(frame))
            return frames, socket.close_code, socket.close_reason

    frames, code, reason = asyncio.run(asyncio.wait_for(connect(), 30))

    assert code == 1008
    assert frames == [{"type": "error", "detail": reason}]
    assert str(reason).startswith("Invalid resource id")
