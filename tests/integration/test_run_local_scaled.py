"""`make run-scaled` (scripts/run-local scaled): redis-server, the hybrid api, one worker and
beat come up on this machine, a heavy task runs on the worker, and Ctrl-C stops them all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from scripts.harness.processes import (
    REPO_ROOT,
    child_pids,
    clean_environment,
    free_port,
    wait_for_port,
)

pytestmark = pytest.mark.integration


def _as_in_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default. A test run started in the
    background of a non-interactive shell inherits SIGINT ignored, and a shell cannot trap a
    signal ignored on entry; a terminal's foreground job never has it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_run_local_scaled_runs_heavy_tasks_on_its_worker_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    port, redis_port = free_port(), free_port()
    env = clean_environment(
        PORT=str(port), REDIS_PORT=str(redis_port), TMPDIR=str(tmp_path), VENV=".venv"
    )
    log_path = tmp_path / "run-local.log"
    with log_path.open("wb") as log:
        # A session of its own, like a terminal: Ctrl-C goes to the script's process group.
        process = subprocess.Popen(
            [str(REPO_ROOT / "scripts" / "run-local"), "scaled"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_as_in_a_terminal,
        )
    try:
        wait_for_port(port, timeout=60, process=process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:  # the worker's first heartbeat reaches the api's monitor
                executors = client.get("/api/tasks/executors").json()
                route = {t["name"]: t["route"] for t in executors["tasks"]}
                if route["calculate_all_ratings"] == "celery":
                    break
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            task_id = client.post("/api/tasks/rating/recalculate").json()["task_id"]
            while (record := client.get(f"/api/tasks/{task_id}/status").json())["status"] in (
                "PENDING",
                "STARTED",
            ):
                assert time.monotonic() < deadline + 30, log_path.read_text()
                time.sleep(0.1)
        assert executors["mode"] == "scaled"
        assert record["status"] == "SUCCESS"
        assert record["executor"] == "celery"
        assert record["worker"].startswith("local@")

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert process.wait(timeout=60) is not None
        output = log_path.read_text()
        assert "run-local: stopping" in output
        with pytest.raises(TimeoutError, match="nothing listened"):
            wait_for_port(redis_port, timeout=1)  # its redis-server is gone too
    finally:
        if process.poll() is None:
            # Each service has a process group of its own (the script's `set -m`): a failed
            # run must not leave them serving.
            for service in child_pids(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service, signal.SIGKILL)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
