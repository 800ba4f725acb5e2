"""compose-to-local: every service of compose.yaml's two deployments, run here.

`docker compose up` and `docker compose --profile scaled up` are resolved from compose.yaml
(scripts/harness/compose_to_local.py says what is rewritten) and each service starts as a
local process — Redis on Debian's redis-server with the .env password. Then each service's
healthcheck passes, and a heavy task submitted over HTTP completes where the deployment says:
in the api for the single container, on the Celery worker with the scaled profile.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.harness.chart_to_local import LocalContainer, settings_env_names
from scripts.harness.compose_to_local import ComposeProject, load
from scripts.harness.processes import clean_environment, wait_for_port

pytestmark = pytest.mark.integration

FINAL = {"SUCCESS", "FAILURE", "CANCELLED"}
#: Variables of the compose services read by something other than Settings, and by whom.
OTHER_READERS = {"REDISCLI_AUTH": "redis-cli (the Redis healthcheck)"}


class LocalServices:
    """Started services; stops every process group at the end."""

    def __init__(self, project: ComposeProject, tmp_path: Path) -> None:
        self.project = project
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.containers: dict[str, LocalContainer] = {}

    def start(self, name: str, *extra_args: str) -> LocalContainer:
        container = self.project.container(name)
        unread = set(container.declared_env) - settings_env_names() - set(OTHER_READERS)
        assert not unread, f"{name} sets variables nobody reads: {unread}"
        container.argv += extra_args
        log = self.tmp_path / f"{name}.log"
        self.processes[name] = container.spawn(log, clean_environment())
        self.containers[name] = container
        return container

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def healthy(self, name: str, within: float = 60) -> None:
        """The service's healthcheck, run as Docker runs it, until it passes."""
        container = self.containers[name]
        argv = self.project.healthcheck_argv(container)
        assert argv is not None, f"{name} has no healthcheck"
        deadline = time.monotonic() + within
        while True:
            check = subprocess.run(
                argv,
                env={**clean_environment(), **container.env},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if check.returncode == 0:
                return
            assert self.processes[name].poll() is None, self.log(name)
            assert time.monotonic() < deadline, (check.stdout, check.stderr, self.log(name))
            time.sleep(0.5)

    def start_redis(self) -> None:
        redis = self.project.container("redis")
        (port,) = redis.ports.values()
        redis.argv += ["--port", str(port), "--bind", "127.0.0.1"]
        self.processes["redis"] = redis.spawn(self.tmp_path / "redis.log", clean_environment())
        self.containers["redis"] = redis
        wait_for_port(port, timeout=15)
        self.healthy("redis")

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes.values()):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


@contextlib.contextmanager
def compose_up(tmp_path: Path, *profiles: str) -> Iterator[LocalServices]:
    env = {"TASKLANE_API_TOKEN": secrets.token_hex(16), "REDIS_PASSWORD": secrets.token_hex(16)}
    project = ComposeProject(load(env), profiles, tmp_path)
    services = LocalServices(project, tmp_path)
    try:
        yield services
    finally:
        services.stop()


def submit_and_wait(url: str, token: str, name: str, within: float = 60) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(f"{url}/api/tasks", json={"name": name}, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    deadline = time.monotonic() + within
    while True:
        status_url = f"{url}/api/tasks/{task_id}/status"
        record = httpx.get(status_url, headers=headers, timeout=10).json()
        if record["status"] in FINAL:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.2)


def route_of(url: str, token: str, task: str) -> str:
    """Where the api would send `task` now (GET /api/tasks/executors)."""
    headers = {"Authorization": f"Bearer {token}"}
    info = httpx.get(f"{url}/api/tasks/executors", headers=headers, timeout=10).json()
    (spec,) = [item for item in info["tasks"] if item["name"] == task]
    return str(spec["route"])


def start_backend(services: LocalServices) -> str:
    backend = services.start("backend")
    (port,) = backend.ports.values()
    wait_for_port(port, timeout=60, process=services.processes["backend"])
    services.healthy("backend")
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401  # the .env token guards
    return url


def test_compose_up_runs_the_single_container_deployment(tmp_path: Path) -> None:
    with compose_up(tmp_path) as services:
        assert set(services.project.services) == {"backend", "redis"}
        services.start_redis()
        url = start_backend(services)
        token = services.containers["backend"].env["TASKLANE_API_TOKEN"]
        assert route_of(url, token, "calculate_all_ratings") == "background"

        record = submit_and_wait(url, token, "calculate_all_ratings")

        assert record["status"] == "SUCCESS", (record, services.log("backend"))
        assert record["executor"] == "background"  # no worker: the task ran in the api


def test_the_scaled_profile_runs_a_heavy_task_on_the_worker(tmp_path: Path) -> None:
    with compose_up(tmp_path, "scaled") as services:
        assert set(services.project.services) == {"backend", "redis", "worker", "scheduler"}
        services.start_redis()
        worker = services.start("worker")
        services.start("scheduler")
        url = start_backend(services)
        services.healthy("worker")
        token = services.containers["backend"].env["TASKLANE_API_TOKEN"]
        deadline = time.monotonic() + 30  # the api's monitor sees a new worker within ~2 s
        while route_of(url, token, "calculate_all_ratings") != "celery":
            assert time.monotonic() < deadline, services.log("backend")
            time.sleep(0.2)

        record = submit_and_wait(url, token, "calculate_all_ratings")

        assert record["status"] == "SUCCESS", (record, services.log("worker"))
        assert record["executor"] == "celery"
        assert str(record["worker"]).startswith("celery@")
        (metrics_port,) = worker.ports.values()
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        finished = {
            (sample.labels["task"], sample.labels["status"]): sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "tasklane_tasks_finished_total"
        }
        assert finished.get(("calculate_all_ratings", "SUCCESS")) == 1, finished
        assert "beat: Starting" in services.log("scheduler"), services.log("scheduler")
