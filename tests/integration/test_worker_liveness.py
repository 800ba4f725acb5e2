"""`tasklane status --worker`, the worker pod's liveness probe, against a real Celery worker:
alive while it beats, dead soon after it is SIGKILLed, never judged while Redis is unreachable
(restarting workers in a Redis outage only adds churn)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from scripts.harness.celery_processes import CeleryWorker
from scripts.harness.processes import REPO_ROOT, clean_environment, free_port, tasklane_command

pytestmark = pytest.mark.integration

HEARTBEAT = 0.5


def probe(redis_url: str, hostname: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tasklane_command("status", "--worker", "--hostname", hostname),
        cwd=REPO_ROOT,
        env=clean_environment(
            REDIS_URL=redis_url, TASKLANE_WORKER_HEARTBEAT_INTERVAL=str(HEARTBEAT)
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probe_passes_while_the_worker_beats_and_fails_after_it_dies(
    redis_url: str, tmp_path: Path
) -> None:
    worker = CeleryWorker(redis_url, log_path=tmp_path / "worker.log", heartbeat_interval=HEARTBEAT)
    try:
        alive = probe(redis_url, worker.hostname)
        assert alive.returncode == 0, alive.stderr
        assert "last heartbeat" in alive.stdout

        worker.kill()
        deadline = time.monotonic() + 10
        while (dead := probe(redis_url, worker.hostname)).returncode == 0:
            assert time.monotonic() < deadline, "probe still passes 10 s after SIGKILL"
            time.sleep(0.2)
        assert dead.returncode == 1
        assert worker.hostname in dead.stderr
    finally:
        worker.stop()


def test_probe_fails_for_a_worker_that_never_beat(redis_url: str) -> None:
    result = probe(redis_url, "celery@never-started")
    assert result.returncode == 1
    assert "no heartbeat from celery@never-started" in result.stderr


def test_probe_does_not_judge_when_redis_is_unreachable() -> None:
    result = probe(f"redis://127.0.0.1:{free_port()}/0", "celery@anything")
    assert result.returncode == 0
    assert "not judging" in result.stdout
