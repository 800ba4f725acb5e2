"""`uvicorn app.main:app`, the way every FastAPI user starts an app, against a real uvicorn
subprocess: it serves, and under a broken environment the import still works while start-up
fails naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scripts.harness.processes import (
    REPO_ROOT,
    clean_environment,
    free_port,
    run_python,
    terminate,
    wait_for_port,
)

pytestmark = pytest.mark.integration


def test_uvicorn_app_main_app_serves(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
            cwd=REPO_ROOT,
            env=clean_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=30, process=process)
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert answer.status_code == 200, log.read_text()
        submitted = httpx.post(f"http://127.0.0.1:{port}/api/tasks/cleanup/sessions", timeout=5)
        assert submitted.status_code == 202
    finally:
        terminate(process)


def test_a_broken_environment_imports_but_refuses_to_start(tmp_path: Path) -> None:
    env = clean_environment(TASKLANE_STORE="redis")  # no REDIS_URL: cannot work

    imported = run_python("import app.main; print(type(app.main.app).__name__)", env=env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "FastAPI"

    started = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "REDIS_URL" in started.stderr + started.stdout
