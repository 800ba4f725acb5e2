"""Real Celery processes for integration tests: `celery -A app.workers.celery_app worker|beat`.

    worker = CeleryWorker(redis_url, log_path=tmp_path / "worker.log")   # returns once live
    ...                                                                  # tasks run on it
    worker.kill()        # SIGKILL to the worker and its pool children (a pod dying)
    worker.terminate()   # SIGTERM to the main process only: Celery's warm shutdown
    worker.log()         # everything it wrote

Each process starts from clean_environment() (no TASKLANE_/CELERY_/REDIS_ variable of the test
process leaks in), gets CELERY_BROKER_URL and REDIS_URL = redis_url plus the `env` the test
passes (env={"REDIS_URL": ...} puts records and heartbeats in another Redis), runs with cwd and
PYTHONPATH = the repository, and writes stdout+stderr to log_path.
Both classes are context managers that stop() (kill if still running) on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import redis
from celery import Celery
from celery.beat import PersistentScheduler

from scripts.harness.processes import REPO_ROOT, clean_environment, tasklane_command

#: What a test worker loads besides app.tasks: the throwaway tasks of both sample modules.
SAMPLE_TASK_MODULES = "scripts.harness.sample_tasks,scripts.harness.celery_sample_tasks"


def celery_command(*args: str) -> list[str]:
    """The venv's `celery` console script (what the guide's deployment runs) with args."""
    script = Path(sys.executable).with_name("celery")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "celery"]
    return [*base, "-A", "app.workers.celery_app", *args]


def unique_hostname(prefix: str = "worker") -> str:
    """A Celery node name no other worker of this test session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


class _CeleryProcess:
    """Shared plumbing: environment, log file, signals, wait-with-diagnostics."""

    process: subprocess.Popen[bytes]

    def __init__(self, redis_url: str, log_path: Path, env: Mapping[str, str] | None) -> None:
        self.redis_url = redis_url
        self.log_path = log_path
        self.env = clean_environment(
            **{
                "CELERY_BROKER_URL": redis_url,
                "REDIS_URL": redis_url,
                "TASKLANE_LOG_LEVEL": "INFO",
                **(env or {}),
            }
        )

    def _spawn(self, argv: list[str]) -> None:
        with self.log_path.open("ab") as output:
            # A session of its own: kill() can take the pool children down with the main
            # process, as a container runtime does, and the test's terminal signals stay out.
            self.process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the main process and every process of its session (the pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the main process only (warm shutdown: running tasks finish first) and wait
        for it to exit; returns its exit code. Kills the whole session if it overruns."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.process.args} ignored SIGTERM for {timeout} s:\n{self.log()[-3000:]}"
            ) from None
        finally:
            self._reap_session()

    def stop(self) -> None:
        """Cleanup for fixtures: kill whatever of the session is still running."""
        if self.alive():
            self.kill()
        self._reap_session()

    def _reap_session(self) -> None:
        # Pool children orphaned by a killed main process would keep consuming otherwise.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(
                    f"{what}: the process exited with {self.process.returncode}:\n"
                    f"{self.log()[-4000:]}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{what} within {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class CeleryWorker(_CeleryProcess):
    """`celery -A app.workers.celery_app worker` against redis_url; the constructor returns once
    the worker's heartbeat is in Redis (`{key_prefix}workers` has `hostname`).

    queues, concurrency, hostname (default: a unique one) and pool become the worker's -Q, -c,
    -n and -P; heartbeat_interval sets TASKLANE_WORKER_HEARTBEAT_INTERVAL (short, so liveness
    changes are quick to observe); task_modules sets TASKLANE_TASK_MODULES (default: the
    sample task modules); env adds or overrides anything else (TASKLANE_VISIBILITY_TIMEOUT...).
    The worker's /metrics endpoint is off (port 0) unless env sets TASKLANE_WORKER_METRICS_PORT:
    several test workers must not compete for one port. launcher="tasklane" starts it through
    the launch command the image runs (`tasklane worker`, which prepares the metrics folder and
    exec's Celery) instead of `celery worker`.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        log_path: Path,
        queues: Iterable[str] = ("light", "heavy"),
        concurrency: int = 2,
        hostname: str | None = None,
        heartbeat_interval: float = 0.5,
        task_modules: str = SAMPLE_TASK_MODULES,
        pool: str = "prefork",
        key_prefix: str = "tasklane:",
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        launcher: Literal["celery", "tasklane"] = "celery",
    ) -> None:
        super().__init__(
            redis_url,
            log_path,
            {
                "TASKLANE_WORKER_METRICS_PORT": "0",
                "TASKLANE_WORKER_HEARTBEAT_INTERVAL": str(heartbeat_interval),
                "TASKLANE_TASK_MODULES": task_modules,
                "TASKLANE_KEY_PREFIX": key_prefix,
                **dict(env or {}),
            },
        )
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.hostname = hostname or unique_hostname()
        self.key_prefix = key_prefix
        options = [
            "--queues",
            ",".join(self.queues),
            "--concurrency",
            str(concurrency),
            "--hostname",
            self.hostname,
            "--pool",
            pool,
            "--loglevel",
            "INFO",
        ]
        if launcher == "tasklane":
            self._spawn(tasklane_command("worker", *options))
        else:
            self._spawn(celery_command("worker", *options, "--without-mingle", "--without-gossip"))
        self._wait(f"worker {self.hostname} heartbeat", self.heartbeat_seen, start_timeout)

    def heartbeat_seen(self) -> bool:
        """Is this worker's hostname in the `workers` ZSET (of the store's Redis) right now?"""
        client = redis.Redis.from_url(self.env["REDIS_URL"], socket_timeout=2)
        try:
            return client.zscore(f"{self.key_prefix}workers", self.hostname) is not None
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()


def make_entry_due(app: Celery, schedule_path: Path, entry_name: str) -> None:
    """Write beat's schedule file with `entry_name` last run two intervals ago, so a beat
    started on that file sends it at once (beat keeps stored run times when it merges the
    configured beat_schedule). `app` must carry the same beat_schedule as the beat process."""
    scheduler = PersistentScheduler(app=app, schedule_filename=str(schedule_path), lazy=False)
    try:
        entry = scheduler.schedule[entry_name]
        entry.last_run_at = app.now() - 2 * timedelta(seconds=entry.schedule.seconds)
        scheduler.sync()
    finally:
        scheduler.close()


class CeleryBeat(_CeleryProcess):
    """`celery -A app.workers.celery_app beat --schedule <schedule_path>`; the constructor
    returns once beat has written its schedule file. make_entry_due() beforehand makes an
    entry due at start instead of one interval later."""

    def __init__(
        self,
        redis_url: str,
        *,
        log_path: Path,
        schedule_path: Path,
        task_modules: str = SAMPLE_TASK_MODULES,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            redis_url, log_path, {"TASKLANE_TASK_MODULES": task_modules, **(env or {})}
        )
        self.schedule_path = schedule_path
        self._spawn(celery_command("beat", "--schedule", str(schedule_path), "--loglevel", "INFO"))
        self._wait("beat schedule file", self.schedule_written, start_timeout)

    def schedule_written(self) -> bool:
        """Has beat created its schedule file (shelve may add a suffix such as .db)?"""
        return any(self.schedule_path.parent.glob(self.schedule_path.name + "*"))
