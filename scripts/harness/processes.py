"""Starts real services on free loopback ports: redis-server now, the api and Celery later."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, timeout: float = 15.0, process: subprocess.Popen | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


class RedisServer:
    """A real redis-server on a free loopback port, with no persistence; stop()/start() keep
    the port so clients can reconnect after a simulated outage."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="tasklane-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server; keep_data: SHUTDOWN SAVE first, so start() reloads every key (an
        outage without data loss, like a Redis pod restarted from its volume); else every key
        is lost, even after an earlier keep_data stop (its snapshot is removed)."""
        if self.process is None:
            return
        if keep_data and self.process.poll() is None:
            client = redis.Redis.from_url(self.url)
            with contextlib.suppress(redis.exceptions.ConnectionError):
                client.shutdown(save=True)
            client.close()
            self.process.wait(timeout=30)
        terminate(self.process)
        self.process = None
        if not keep_data:
            Path(self.workdir, "dump.rdb").unlink(missing_ok=True)

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()

    def client(self) -> redis.Redis:
        """A sync client with str responses, for assertions on raw keys."""
        return redis.Redis.from_url(self.url, decode_responses=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def child_pids(pid: int) -> list[int]:
    """Direct child processes of pid, from /proc (empty once it has exited)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(part) for part in path.read_text().split()]
    except FileNotFoundError:
        return []


def terminate(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds; reaps it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def clean_environment(**overrides: str) -> dict[str, str]:
    """This process's environment without any tasklane, Redis, Celery or prometheus_client
    multiprocess setting, plus overrides: a server started with it sees only what the test
    chose."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKLANE_", "CELERY_", "REDIS_"))
        and key not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(overrides)
    return env


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -c code` in a fresh interpreter at the repository root, with
    clean_environment() unless `env` is given; stdout and stderr captured as text. For what
    must be seen from a process of its own: imports made, module-level state, entry points."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=clean_environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def tasklane_command(*args: str) -> list[str]:
    """The installed `tasklane` console script (what the image and `make run` use)."""
    script = Path(sys.executable).with_name("tasklane")
    if not script.exists():
        raise RuntimeError("the tasklane console script is not installed: run `make test`")
    return [str(script), *args]


class ServerProcess:
    """`tasklane serve` on a free loopback port, its output in a log file; workers > 1 runs
    that many uvicorn worker processes (what the chart's `api.workers` does)."""

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        with log_path.open("wb") as output:
            self.process = subprocess.Popen(
                tasklane_command(*argv),
                cwd=REPO_ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own group: kill() takes uvicorn's worker processes down with it.
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=30, process=self.process)
        except Exception:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
