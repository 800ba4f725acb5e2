"""`tasklane` command line: argument handling, and a real `tasklane serve` answering HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from app import cli
from scripts.harness.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run(app: str, **kwargs: Any) -> int:
        calls.append({"app": app, **kwargs})
        return 0

    monkeypatch.setattr(cli, "run_uvicorn", fake_run)
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "TASKLANE_STORE", "TASKLANE_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TASKLANE_LOG_LEVEL", raising=False)
    return calls


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])

    assert exited.value.code == 0
    assert "serve" in capsys.readouterr().out


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])

    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_serve_defaults(uvicorn_calls: list[dict[str, Any]]) -> None:
    assert cli.main(["serve"]) == 0

    (call,) = uvicorn_calls
    log_config = call.pop("log_config")
    assert call == {
        "app": "app.main:create_app",
        "factory": True,
        "host": "127.0.0.1",
        "port": 8000,
        "workers": 1,
        "log_level": "info",
    }
    # uvicorn's own start-up lines go through tasklane's formatter (text locally).
    assert log_config["formatters"]["tasklane"]["()"] == "app.logs.TextFormatter"


def test_serve_logs_json_from_the_first_line_when_asked(
    uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_LOG_FORMAT", "json")
    assert cli.main(["serve"]) == 0
    config = uvicorn_calls[0]["log_config"]
    assert config["formatters"]["tasklane"]["()"] == "app.logs.JsonFormatter"
    assert config["loggers"]["uvicorn.error"]["propagate"] is True


def test_beat_and_status_create_the_pod_metrics_folder_without_wiping_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert cli.main(["status", "--worker"]) == 0  # Redis unreachable: not judged
    assert folder.is_dir()
    (folder / "counter_1.db").write_bytes(b"another process's samples")
    assert cli.main(["status", "--worker"]) == 0
    assert (folder / "counter_1.db").exists()


def test_serve_options_reach_uvicorn_and_the_app(
    uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # workers > 1 need a shared store

    code = cli.main(
        ["serve", "--host", "0.0.0.0", "--port", "9001", "--workers", "2", "--log-level", "DEBUG"]
    )

    assert code == 0
    call = uvicorn_calls[0]
    assert (call["host"], call["port"], call["workers"], call["log_level"]) == (
        "0.0.0.0",
        9001,
        2,
        "debug",
    )
    assert os.environ["TASKLANE_LOG_LEVEL"] == "DEBUG"  # what each worker's factory reads


def test_serve_refuses_several_workers_on_the_memory_store(
    uvicorn_calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--workers", "3"]) == 2

    assert uvicorn_calls == []
    assert "REDIS_URL" in capsys.readouterr().err


def test_serve_reports_an_unworkable_configuration(
    uvicorn_calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TASKLANE_STORE", "redis")

    assert cli.main(["serve"]) == 2

    assert uvicorn_calls == []
    assert "TASKLANE_STORE=redis needs REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "70000"], "argument --port: must be an integer from 0 to 65535"),
        (
            ["serve", "--port", "abc"],
            "argument --port: must be an integer from 0 to 65535, not 'abc'",
        ),
        (["serve", "--workers", "0"], "argument --workers: must be an integer of at least 1"),
        (["serve", "--workers", "two"], "argument --workers: must be an integer of at least 1"),
        (["worker", "--metrics-port", "x"], "argument --metrics-port: must be an integer from 0"),
        (["scale", "--replicas", "many"], "argument --replicas: must be an integer of at least 0"),
    ],
)
def test_bad_numbers_are_refused_with_the_accepted_range(
    argv: list[str],
    message: str,
    uvicorn_calls: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    assert uvicorn_calls == []
    error = capsys.readouterr().err
    assert message in error
    assert "invalid" not in error  # argparse's "invalid _port value" named a private function


def test_tasklane_serve_answers_and_shuts_down_on_sigterm() -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKLANE_", "REDIS_", "CELERY_"))
    }
    script = Path(sys.executable).with_name("tasklane")  # the installed console script
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port), "--log-level", "info"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "tasklane serve did not become ready"
                time.sleep(0.1)
        process.terminate()
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit too.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
        output = process.stdout.read().decode()  # type: ignore[union-attr]
        assert "Application shutdown complete" in output
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
