"""Acceptance, against a real `tasklane serve` (uvicorn) process and a real redis-server:
SIGTERM while 20 sync and async tasks run → after exit every record is SUCCESS or FAILURE with
error type Interrupted; none is left STARTED (or PENDING)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.harness.processes import RedisServer, ServerProcess, clean_environment

pytestmark = pytest.mark.integration

GRACE = 2.0
LONG = 30


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    env = clean_environment(
        REDIS_URL=redis_url,
        TASKLANE_STORE="redis",
        TASKLANE_EXECUTOR="background",
        TASKLANE_SHUTDOWN_GRACE=str(GRACE),
        TASKLANE_SCHEDULER="off",
        TASKLANE_CONCURRENCY="64",
        TASKLANE_TASK_MODULES="scripts.harness.sample_tasks",
        TASKLANE_LOG_LEVEL="WARNING",
    )
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        yield server.process, server.url, server.log_path
    finally:
        server.kill()


def wait_for(client: httpx.Client, ids: list[str], done: set[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for task_id in ids:
        while True:
            status = client.get(f"/api/tasks/{task_id}/status").json()["status"]
            if status in done:
                break
            assert time.monotonic() < deadline, f"{task_id} still {status}"
            time.sleep(0.05)


def test_sigterm_settles_every_running_task_and_exits_promptly(
    server: tuple[subprocess.Popen[bytes], str, Path], redis_server: RedisServer
) -> None:
    process, base_url, log = server
    with httpx.Client(base_url=base_url, timeout=10) as client:

        def submit(name: str, *args: object, countdown: float | None = None) -> str:
            body: dict[str, object] = {"name": name, "args": list(args)}
            if countdown is not None:
                body["countdown"] = countdown
            response = client.post("/api/tasks", json=body)
            assert response.status_code == 202, response.text
            return response.json()["task_id"]

        sync_cooperative = [submit("sample_sleep_sync", LONG) for _ in range(7)]
        sync_blocking = [submit("sample_block_sync", LONG) for _ in range(3)]
        asynchronous = [submit("sample_sleep_async", LONG) for _ in range(10)]
        succeeded = [submit("sample_sleep_async", 0.05), submit("sample_maybe_fail", 3)]
        failed = [submit("sample_maybe_fail", 10)]
        delayed = [submit("sample_sleep_async", 0.05, countdown=600) for _ in range(2)]
        running = sync_cooperative + sync_blocking + asynchronous

        wait_for(client, running, {"STARTED"})
        wait_for(client, succeeded + failed, {"SUCCESS", "FAILURE"})

    process.send_signal(signal.SIGTERM)
    began = time.monotonic()
    try:
        code = process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running 20 s after SIGTERM:\n{log.read_text()[-3000:]}")
    took = time.monotonic() - began

    raw = redis_server.client()
    try:
        records = {
            task_id: json.loads(raw.get(f"tasklane:task:{task_id}") or "null")
            for task_id in running + succeeded + failed + delayed
        }
        inflight = raw.hgetall("tasklane:inflight")
        runners = raw.keys("tasklane:runner:*")
    finally:
        raw.close()

    # uvicorn re-raises the captured SIGTERM after its graceful shutdown: -15 is a clean exit.
    assert code in (0, -signal.SIGTERM), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    # Grace, then up to 2 s for cancelled jobs to settle: the 30 s blocking threads never count.
    assert took < 15, took
    assert all(record is not None for record in records.values())
    statuses = {task_id: record["status"] for task_id, record in records.items()}
    assert set(statuses.values()) <= {"SUCCESS", "FAILURE"}, statuses
    for task_id in running + delayed:
        assert records[task_id]["status"] == "FAILURE"
        assert records[task_id]["error"]["type"] == "Interrupted", records[task_id]
        assert records[task_id]["finished_at"] is not None
    assert {statuses[task_id] for task_id in succeeded} == {"SUCCESS"}
    assert records[failed[0]]["error"]["type"] == "ValueError"
    assert inflight == {}
    assert runners == []
