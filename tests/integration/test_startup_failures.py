"""A real `tasklane serve` that cannot start says why in one line naming the variable to fix,
exits non-zero, and prints no traceback (it printed forty lines of frames)."""

from __future__ import annotations

import subprocess

import pytest

from scripts.harness.processes import REPO_ROOT, clean_environment, free_port, tasklane_command

pytestmark = pytest.mark.integration


def serve(*argv: str, **env: str) -> tuple[int, str]:
    """Run `tasklane serve` until it exits; its exit code and its output (stderr included)."""
    completed = subprocess.run(
        tasklane_command("serve", "--host", "127.0.0.1", "--port", str(free_port()), *argv),
        cwd=REPO_ROOT,
        env=clean_environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=False,
    )
    return completed.returncode, completed.stdout.decode(errors="replace")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line]


def test_an_unreachable_redis_url_is_one_line_naming_it_without_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there

    code, output = serve(REDIS_URL=url)

    assert code != 0
    assert "Traceback" not in output
    assert "hunter2" not in output
    first, last = error_lines(output)  # ours, then uvicorn's "Application startup failed"
    assert "cannot start: Redis at REDIS_URL=redis://:***@127.0.0.1:" in first
    assert "does not answer (ConnectionError:" in first
    assert "Application startup failed" in last


def test_a_redis_broker_that_holds_the_records_is_named_as_the_broker() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    code, output = serve(CELERY_BROKER_URL=url)

    assert code != 0
    assert "Traceback" not in output
    assert f"Redis at CELERY_BROKER_URL={url} does not answer" in error_lines(output)[0]


def test_a_bad_rate_limit_override_is_one_line_naming_the_variable_and_the_entry() -> None:
    code, output = serve(TASKLANE_RATE_LIMITS="send_notification=lots")

    assert code != 0
    assert "Traceback" not in output
    first = error_lines(output)[0]
    assert "cannot start: TASKLANE_RATE_LIMITS entry 'send_notification=lots'" in first


def test_a_missing_task_module_is_one_line_naming_the_variable_and_the_module() -> None:
    code, output = serve(TASKLANE_TASK_MODULES="app.tasks,tasklane_no_such_module")

    assert code != 0
    assert "Traceback" not in output
    first = error_lines(output)[0]
    assert "cannot start: TASKLANE_TASK_MODULES names 'tasklane_no_such_module'" in first
    assert "cannot be imported" in first


def test_with_several_workers_the_failure_is_still_one_line_and_exit_3() -> None:
    # uvicorn's supervisor stops when a worker cannot start, but returned 0 from uvicorn.run.
    code, output = serve("--workers", "2", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    assert code == 3
    assert "Traceback" not in output
    assert "cannot start: Redis at REDIS_URL=" in output
