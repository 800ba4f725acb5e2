"""Issue 4 acceptance: with 2 api processes and 2 prefork children, the finished counts summed
over the pod endpoints equal the tasks finished — no 1/N undercount.

Real processes only: redis-server, `tasklane serve --workers 2` (uvicorn worker processes) and
`tasklane worker --concurrency 2` (Celery prefork), each with its own PROMETHEUS_MULTIPROC_DIR
as the launch commands prepare it; the counts are read from their /metrics endpoints. The test
also proves that both api processes and both pool children really ran tasks, otherwise a 1/N
undercount could not show.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker
from scripts.harness.processes import ServerProcess, clean_environment, free_port

pytestmark = pytest.mark.integration

FINAL = {"SUCCESS", "FAILURE", "CANCELLED"}


def finished_total(url: str) -> float:
    """Sum of tasklane_tasks_finished_total over every label set one endpoint serves."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tasklane_tasks_finished_total"
    )


def pids_with(folder: Path, kind: str) -> set[int]:
    return {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob(f"{kind}_*.db")}


@pytest.fixture
def pod(redis_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, CeleryWorker, int]]:
    shared = {
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "TASKLANE_EXECUTOR": "hybrid",
        "TASKLANE_TASK_MODULES": SAMPLE_TASK_MODULES,
        "TASKLANE_WORKER_HEARTBEAT_INTERVAL": "0.5",
        "TASKLANE_MONITOR_INTERVAL": "0.2",
        "TASKLANE_SCHEDULER": "off",
    }
    metrics_port = free_port()
    worker = CeleryWorker(
        redis_url,
        log_path=tmp_path / "worker.log",
        concurrency=2,
        launcher="tasklane",
        env={
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
            "TASKLANE_WORKER_METRICS_PORT": str(metrics_port),
            "TASKLANE_WORKER_METRICS_HOST": "127.0.0.1",
        },
    )
    api = ServerProcess(
        clean_environment(**shared, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "api-metrics")),
        tmp_path / "api.log",
        workers=2,
    )
    try:
        yield api, worker, metrics_port
    finally:
        api.kill()
        worker.stop()


def submit(url: str, name: str, *args: object) -> str:
    # A new connection per request: the kernel hands each to whichever api process accepts.
    response = httpx.post(f"{url}/api/tasks", json={"name": name, "args": list(args)}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def wait_final(url: str, task_ids: list[str], within: float = 60) -> list[dict[str, object]]:
    deadline = time.monotonic() + within
    records: list[dict[str, object]] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for task_id in task_ids:
            while True:
                record = client.get(f"/api/tasks/{task_id}/status").json()
                if record["status"] in FINAL:
                    records.append(record)
                    break
                assert time.monotonic() < deadline, record
                time.sleep(0.05)
    return records


def test_finished_counts_are_complete_across_api_processes_and_pool_children(
    pod: tuple[ServerProcess, CeleryWorker, int], tmp_path: Path
) -> None:
    api, _worker, metrics_port = pod
    worker_url = f"http://127.0.0.1:{metrics_port}"
    # Each api process has its own monitor: wait until ten answers in a row (new connections,
    # so both processes answer some) report the worker, or heavy tasks would run locally.
    deadline = time.monotonic() + 20
    confirmations = 0
    while confirmations < 10:
        workers = httpx.get(f"{api.url}/api/tasks/executors", timeout=5).json()["workers"]
        confirmations = confirmations + 1 if workers.get("heavy", 0) >= 1 else 0
        assert time.monotonic() < deadline, "the api processes never saw the worker"
        time.sleep(0.05)

    # Heavy tasks on the worker, at once, so both pool children take some.
    ids = [submit(api.url, "celery_effect_once", f"mp-{i}", 0.2) for i in range(10)]
    # Light tasks in-process, until both api processes have run some (records name the pid).
    in_process: list[dict[str, object]] = []
    for batch in range(20):
        batch_ids = [submit(api.url, "sample_maybe_fail", batch * 10 + i) for i in range(10)]
        in_process += wait_final(api.url, batch_ids)
        if len({record["worker"] for record in in_process}) >= 2:
            break
    records = wait_final(api.url, ids) + in_process

    api_processes = Counter(str(record["worker"]) for record in in_process)
    assert len(api_processes) == 2, api_processes
    assert {record["executor"] for record in records} == {"background", "celery"}
    children = pids_with(tmp_path / "worker-metrics", "histogram")
    assert len(children) >= 2, f"one pool child ran every task: {children}"

    expected = len(records)
    deadline = time.monotonic() + 10
    while (counted := finished_total(api.url) + finished_total(worker_url)) != expected:
        # A final status is written before its hook counts it: allow that instant to pass.
        assert time.monotonic() < deadline, (counted, expected)
        time.sleep(0.1)
    on_worker = sum(1 for record in records if record["executor"] == "celery")
    assert on_worker == 10
    assert finished_total(worker_url) == on_worker
    assert finished_total(api.url) == expected - on_worker
