"""compose-to-local: every service of compose.yaml's two deployments, run here.

`docker compose up` and `docker compose --profile scaled up` are resolved from compose.yaml
(scripts/harness/compose_to_local.py says what is rewritten) and each service starts as a
local process — Redis on Debian's redis-server with the .env password. Then each service's
healthcheck passes, and a heavy task submitted over HTTP completes where the deployment says:
in the api for the single container, on the Celery worker with the scaled profile.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.harness.chart_to_local import (
    LocalContainer,
    LocalPods,
    finished_on,
    settings_env_names,
    submit_and_wait,
)
from scripts.harness.compose_to_local import ComposeProject, load
from scripts.harness.processes import wait_for_port

pytestmark = pytest.mark.integration

#: Variables of the compose services read by something other than Settings, and by whom.
OTHER_READERS = {"REDISCLI_AUTH": "redis-cli (the Redis healthcheck)"}


class LocalServices(LocalPods):
    """The started services of one `docker compose up`, by service name."""

    def __init__(self, project: ComposeProject, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.project = project
        self.containers: dict[str, LocalContainer] = {}

    def start_service(self, name: str, container: LocalContainer | None = None) -> LocalContainer:
        """Start the service (resolved here unless the caller resolved and adjusted it)."""
        container = container or self.project.container(name)
        unread = set(container.declared_env) - settings_env_names() - set(OTHER_READERS)
        assert not unread, f"{name} sets variables nobody reads: {unread}"
        self.start(container)
        self.containers[name] = container
        return container

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return self.process_of(self.containers[name])

    def healthy(self, name: str, within: float = 60) -> None:
        """The service's healthcheck, run as Docker runs it, until it passes."""
        container = self.containers[name]
        argv = self.project.healthcheck_argv(container)
        assert argv is not None, f"{name} has no healthcheck"
        self.probe_until_passes(container, argv, within)

    def start_redis(self) -> None:
        """compose's redis service on Debian's redis-server, on its (rewritten) port."""
        redis = self.project.container("redis")
        (port,) = redis.ports.values()
        redis.argv += ["--port", str(port), "--bind", "127.0.0.1"]
        self.start_service("redis", redis)
        wait_for_port(port, timeout=15)
        self.healthy("redis")

    def service_log(self, name: str) -> str:
        return self.log(self.containers[name])


@contextlib.contextmanager
def compose_up(tmp_path: Path, *profiles: str) -> Iterator[LocalServices]:
    env = {"TASKLANE_API_TOKEN": secrets.token_hex(16), "REDIS_PASSWORD": secrets.token_hex(16)}
    project = ComposeProject(load(env), profiles, tmp_path)
    services = LocalServices(project, tmp_path)
    try:
        yield services
    finally:
        services.stop()


def bearer(services: LocalServices) -> dict[str, str]:
    """The .env token, as the backend received it."""
    return {"Authorization": f"Bearer {services.containers['backend'].env['TASKLANE_API_TOKEN']}"}


def route_of(url: str, headers: dict[str, str], task: str) -> str:
    """Where the api would send `task` now (GET /api/tasks/executors)."""
    info = httpx.get(f"{url}/api/tasks/executors", headers=headers, timeout=10).json()
    (spec,) = [item for item in info["tasks"] if item["name"] == task]
    return str(spec["route"])


def start_backend(services: LocalServices) -> str:
    backend = services.start_service("backend")
    (port,) = backend.ports.values()
    wait_for_port(port, timeout=60, process=services.process("backend"))
    services.healthy("backend")
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401  # the .env token guards
    return url


def test_compose_up_runs_the_single_container_deployment(tmp_path: Path) -> None:
    with compose_up(tmp_path) as services:
        assert set(services.project.services) == {"backend", "redis"}
        services.start_redis()
        url = start_backend(services)
        assert route_of(url, bearer(services), "calculate_all_ratings") == "background"

        record = submit_and_wait(url, bearer(services), "calculate_all_ratings", [])

        assert record["status"] == "SUCCESS", (record, services.service_log("backend"))
        assert record["executor"] == "background"  # no worker: the task ran in the api


def test_the_scaled_profile_runs_a_heavy_task_on_the_worker(tmp_path: Path) -> None:
    with compose_up(tmp_path, "scaled") as services:
        assert set(services.project.services) == {"backend", "redis", "worker", "scheduler"}
        services.start_redis()
        worker = services.start_service("worker")
        services.start_service("scheduler")
        url = start_backend(services)
        services.healthy("worker")
        headers = bearer(services)
        deadline = time.monotonic() + 30  # the api's monitor sees a new worker within ~2 s
        while route_of(url, headers, "calculate_all_ratings") != "celery":
            assert time.monotonic() < deadline, services.service_log("backend")
            time.sleep(0.2)

        record = submit_and_wait(url, headers, "calculate_all_ratings", [])

        assert record["status"] == "SUCCESS", (record, services.service_log("worker"))
        assert record["executor"] == "celery"
        assert str(record["worker"]).startswith("celery@")
        finished = finished_on(worker)  # the worker's own /metrics on its exposed port
        assert finished.get(("calculate_all_ratings", "celery", "SUCCESS")) == 1, finished
        scheduler_log = services.service_log("scheduler")
        assert "beat: Starting" in scheduler_log, scheduler_log
