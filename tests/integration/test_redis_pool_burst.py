"""A burst against a real scaled `tasklane serve` (hybrid executor, Redis store) over a healthy
redis-server: 500 requests written at once, with WebSocket audio sessions polling meanwhile,
must all be served. A full connection pool waits for a connection; it is not "Redis
unreachable" (redis-py's default pool answered MaxConnectionsError, a 503, to most of them)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from scripts.harness.celery_processes import SAMPLE_TASK_MODULES
from scripts.harness.processes import RedisServer, ServerProcess, clean_environment

pytestmark = pytest.mark.integration

REQUESTS = 500
SESSIONS = 30


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def server(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = clean_environment(
        REDIS_URL=redis.url,
        CELERY_BROKER_URL=redis.url,
        TASKLANE_TASK_MODULES=SAMPLE_TASK_MODULES,
    )  # the default pool size, 100 connections: the burst is five times larger
    log_path: Path = tmp_path_factory.mktemp("burst") / "server.log"
    process = ServerProcess(env, log_path)
    try:
        yield process
    finally:
        process.kill()


def raw_request(method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def parse_response(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def burst(port: int, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Every request on its own connection, all connected first and then written in one go,
    so the server reads them in the same few loop turns: REQUESTS coroutines want Redis at
    once."""
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in requests)
    )
    for (_, writer), request in zip(connections, requests, strict=True):
        writer.write(request)

    async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            return await reader.read()
        finally:
            writer.close()

    replies = await asyncio.gather(*(read(reader, writer) for reader, writer in connections))
    return [parse_response(reply) for reply in replies]


def pcm(seconds: float) -> bytes:
    count = int(16_000 * seconds)
    samples = (round(8000 * math.sin(2 * math.pi * 220 * i / 16_000)) for i in range(count))
    return struct.pack(f"<{count}h", *samples)


async def audio_session(url: str, index: int, start: asyncio.Event) -> list[dict[str, Any]]:
    """A session that connects and streams before the burst, ends during it, then polls."""
    audio = pcm(0.1)
    async with websockets.connect(f"{url}/ws/audio/burst-{index}") as socket:
        await socket.send(audio)
        await start.wait()
        await socket.send(json.dumps({"type": "chunk", "data": base64.b64encode(audio).decode()}))
        await socket.send(json.dumps({"type": "end"}))
        return [json.loads(frame) async for frame in socket]


async def scenario(server: ServerProcess, status_id: str) -> tuple[list, list]:
    requests = [
        raw_request("POST", "/api/tasks", {"name": "sample_sleep_async", "args": [0.01]})
        if i % 2
        else raw_request("GET", f"/api/tasks/{status_id}/status")
        for i in range(REQUESTS)
    ]
    start = asyncio.Event()
    ws_url = server.url.replace("http://", "ws://")
    sessions = [asyncio.ensure_future(audio_session(ws_url, i, start)) for i in range(SESSIONS)]
    await asyncio.sleep(1.0)  # the sessions are open and have streamed their first chunk
    start.set()
    replies = await burst(server.port, requests)
    frames = await asyncio.wait_for(asyncio.gather(*sessions), 60)
    return replies, frames


def test_burst_on_a_healthy_redis_gets_no_503_and_every_task_is_recorded(
    server: ServerProcess, redis: RedisServer
) -> None:
    first = httpx.post(
        f"{server.url}/api/tasks", json={"name": "sample_sleep_async", "args": [0]}, timeout=30
    )
    assert first.status_code == 202, first.text
    status_id = first.json()["task_id"]

    replies, sessions = asyncio.run(scenario(server, status_id))

    codes = Counter(code for code, _ in replies)
    failures = [body.decode(errors="replace") for code, body in replies if code >= 500]
    assert not failures, f"{codes}: {failures[:3]}"
    assert codes == {200: REQUESTS // 2, 202: REQUESTS // 2}
    submitted = [json.loads(body)["task_id"] for code, body in replies if code == 202]
    client = redis.client()
    missing = [i for i in submitted if not client.exists(f"tasklane:task:{i}")]
    client.close()
    assert not missing, f"{len(missing)} accepted tasks have no record"

    errors = [frame for frames in sessions for frame in frames if frame["type"] == "error"]
    assert not errors, errors[:3]
    results = [frames[-1] for frames in sessions]
    assert all(frame["type"] == "result" for frame in results), results[:3]
    assert {frame["status"] for frame in results} == {"SUCCESS"}
