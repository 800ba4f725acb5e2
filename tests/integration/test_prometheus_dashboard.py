"""The metrics acceptance test (DESIGN.md §7): a real `prometheus` scrapes a real api
(`tasklane serve --workers 2`, hybrid executor, multiprocess metrics) and a real prefork
worker (`tasklane worker`, its main process serving /metrics) over a real redis-server, while
mixed traffic runs on both planes; then every query of the chart's Grafana dashboard returns
data through Prometheus' HTTP API, the namespace/release variables list the target labels, and
every alert rule parses and evaluates in Prometheus itself."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker
from scripts.harness.processes import (
    RedisServer,
    ServerProcess,
    clean_environment,
    free_port,
    wait_for_port,
)
from tests.support.prometheus import (
    RULES_PATH,
    PanelTarget,
    PrometheusServer,
    ScrapeTarget,
    alert_rules,
    label_values_query,
    load_dashboard,
    panel_targets,
    substitute,
    template_variables,
    variable_query,
)

pytestmark = pytest.mark.integration

NAMESPACE, RELEASE = "default", "tl"
#: What Grafana would put in the queries for this cluster. The rate window covers the whole
#: run (it lasts well under two minutes), as a dashboard's time range would.
VARIABLES = {"namespace": NAMESPACE, "release": RELEASE, "__rate_interval": "2m"}
HEARTBEAT = "0.5"  # worker and api agree: a worker is live for 1.5 s after its last beat
FINAL = {"SUCCESS", "FAILURE", "CANCELLED"}
TARGETS = panel_targets(load_dashboard())


@dataclass(frozen=True, slots=True, kw_only=True)
class Stack:
    """What the module's tests look at once the traffic has run."""

    prometheus: PrometheusServer
    records: dict[str, dict[str, Any]]  # task id → final record
    fallback_id: str  # the heavy task submitted while no worker was live


def poll(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Re-check `condition` every 0.2 s until it holds; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


@contextlib.contextmanager
def tasklane_api(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`tasklane serve --workers 2` (ServerProcess: its own session, so teardown takes down
    uvicorn's worker processes too); yields the base URL once /healthz answers."""
    server = ServerProcess(env, log_path, workers=2)
    try:

        def healthy() -> bool:
            assert server.process.poll() is None, server.log()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
            return False

        poll(healthy, timeout=30, what="api /healthz")
        yield server.url
    finally:
        server.kill()


def submit(client: httpx.Client, name: str, *args: Any) -> str:
    """POST /api/tasks and expect it accepted; returns the task id."""
    response = client.post("/api/tasks", json={"name": name, "args": list(args)})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def wait_final(client: httpx.Client, task_ids: list[str], timeout: float) -> dict[str, Any]:
    """Every task's record once all of them reached a final status."""
    records: dict[str, dict[str, Any]] = {}

    def all_final() -> bool:
        for task_id in task_ids:
            if task_id not in records:
                record = client.get(f"/api/tasks/{task_id}/status").json()
                if record["status"] in FINAL:
                    records[task_id] = record
        return len(records) == len(task_ids)

    poll(all_final, timeout=timeout, what=f"{len(task_ids)} tasks finishing")
    return records


def route_of(client: httpx.Client, name: str) -> str:
    tasks = client.get("/api/tasks/executors").json()["tasks"]
    return next(task["route"] for task in tasks if task["name"] == name)


def series(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query (AssertionError if Prometheus rejects it)."""
    body = prometheus.query(expr)
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a finite value: what a Grafana panel draws as a line."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis-server, api, Prometheus, then traffic in three phases: before the worker exists (a
    heavy task falls back in-process, tasks pinned to Celery queue up), after (they drain on
    the worker, heavy tasks go there too), and a second round once Prometheus has seen the
    first. Yields once Prometheus has scraped every task's final count."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.flush()
    redis_url = redis_server.url
    workdir = tmp_path_factory.mktemp("prometheus-dashboard")
    worker_metrics_port = free_port()
    api_env = clean_environment(
        CELERY_BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        TASKLANE_TASK_MODULES=SAMPLE_TASK_MODULES,
        TASKLANE_WORKER_HEARTBEAT_INTERVAL=HEARTBEAT,
        TASKLANE_EXECUTOR="hybrid",
        TASKLANE_MONITOR_INTERVAL="0.2",
        TASKLANE_SCHEDULER="off",
        # Light tasks that must run on the worker, failures and retries included.
        TASKLANE_ROUTES="celery_flaky=celery,celery_add=celery",
        PROMETHEUS_MULTIPROC_DIR=str(workdir / "api-metrics"),
    )
    with contextlib.ExitStack() as cleanup:
        api_url = cleanup.enter_context(tasklane_api(api_env, workdir / "api.log"))
        prometheus = cleanup.enter_context(
            PrometheusServer(
                workdir / "prometheus",
                targets=[
                    ScrapeTarget(
                        api_url.removeprefix("http://"),
                        {"namespace": NAMESPACE, "release": RELEASE, "component": "api"},
                    ),
                    ScrapeTarget(
                        f"127.0.0.1:{worker_metrics_port}",
                        {"namespace": NAMESPACE, "release": RELEASE, "component": "worker"},
                    ),
                ],
                rule_files=[RULES_PATH],
            )
        )
        client = cleanup.enter_context(httpx.Client(base_url=api_url, timeout=10))

        def start_worker() -> None:
            worker = cleanup.enter_context(
                CeleryWorker(
                    redis_url,
                    log_path=workdir / "worker.log",
                    launcher="tasklane",
                    concurrency=2,
                    heartbeat_interval=float(HEARTBEAT),
                    env={
                        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "worker-metrics"),
                        "TASKLANE_WORKER_METRICS_PORT": str(worker_metrics_port),
                        "TASKLANE_WORKER_METRICS_HOST": "127.0.0.1",
                    },
                )
            )
            wait_for_port(worker_metrics_port, timeout=30, process=worker.process)

        try:
            yield drive_traffic(client, prometheus, start_worker)
        except (AssertionError, TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{exc}\n{log_tails(workdir)}") from None


def drive_traffic(
    client: httpx.Client, prometheus: PrometheusServer, start_worker: Callable[[], None]
) -> Stack:
    """The three phases of traffic; returns once Prometheus counted every finished task."""
    key = f"dashboard-{uuid.uuid4().hex[:8]}"
    # Phase 1, no worker: the heavy task falls back in-process (reason no_workers), the
    # pinned ones wait in Redis until the worker comes.
    assert route_of(client, "celery_effect_once") == "background"
    fallback_id = submit(client, "celery_effect_once", key, 0.05)
    task_ids = [fallback_id]
    task_ids += [submit(client, "sample_maybe_fail", i) for i in range(10)]  # 0 fails
    task_ids += [submit(client, "sample_sleep_async", 0.05) for _ in range(3)]
    task_ids += [submit(client, "celery_add", i, i) for i in range(6)]
    task_ids.append(submit(client, "celery_flaky", 0))  # fails all 3 attempts
    task_ids.append(submit(client, "celery_flaky", 2))  # one retry, then succeeds
    # Limited to 10/s (run in-process here): deferred starts, waiting tasks.
    task_ids += [submit(client, "celery_rate_limited", i) for i in range(12)]

    # Phase 2, a live worker: heavy tasks go to it once this api process has seen it.
    start_worker()
    poll(
        lambda: route_of(client, "celery_sleep_terminable") == "celery",
        timeout=15,
        what="heavy tasks routed to the live worker",
    )
    task_ids += [submit(client, "celery_sleep_terminable", 0.2) for _ in range(2)]
    task_ids += [submit(client, "celery_effect_once", key, 0.1) for _ in range(2)]
    task_ids += [submit(client, "sample_maybe_fail", i) for i in range(10, 15)]  # 10 fails
    records = wait_final(client, task_ids, timeout=45)
    wait_counted(prometheus, len(records))

    # Phase 3, the same kinds again on series Prometheus already holds: rate() counts only
    # increases between two scrapes, so a series born with its final value in one scrape
    # would show a rate of 0, and the quantiles and ratios built on it NaN.
    more = [submit(client, "celery_add", i, 1) for i in range(3)]
    more += [submit(client, "celery_flaky", 0), submit(client, "celery_flaky", 2)]
    more += [submit(client, "celery_sleep_terminable", 0.1)]
    more += [submit(client, "sample_maybe_fail", i) for i in range(20, 25)]  # 20 fails
    more += [submit(client, "sample_sleep_async", 0.05)]
    more += [submit(client, "celery_rate_limited", i) for i in range(12)]
    records |= wait_final(client, more, timeout=30)
    wait_counted(prometheus, len(records))
    return Stack(prometheus=prometheus, records=records, fallback_id=fallback_id)


def wait_counted(prometheus: PrometheusServer, count: int) -> None:
    """Block until Prometheus' latest scrapes add up to `count` finished tasks, then insist on
    exactly that many: every api process and pool child counted once, none twice."""
    finished = f'sum(tasklane_tasks_finished_total{{namespace="{NAMESPACE}",release="{RELEASE}"}})'
    total = 0.0

    def counted() -> bool:
        nonlocal total
        result = series(prometheus, finished)
        total = float(result[0]["value"][1]) if result else 0.0
        return total >= count

    try:
        poll(counted, timeout=20, what="Prometheus counting every finished task")
    except AssertionError:
        raise AssertionError(f"Prometheus counts {total} of {count} finished tasks") from None
    assert total == count, f"Prometheus counts {total} finished tasks, {count} finished"


def log_tails(workdir: Path, size: int = 3000) -> str:
    """The end of every process log of the stack, for a failure message."""
    parts = []
    for path in sorted(workdir.rglob("*.log")):
        text = path.read_text(errors="replace")[-size:]
        parts.append(f"--- {path.relative_to(workdir)} ---\n{text}")
    return "\n".join(parts)


def test_traffic_ran_on_both_planes_with_failures_retries_and_a_fallback(stack: Stack) -> None:
    """The panels below can only show what this traffic produced: check it did."""
    records = stack.records.values()
    assert stack.records[stack.fallback_id]["executor"] == "background"
    assert {record["executor"] for record in records} == {"background", "celery"}
    assert {record["status"] for record in records} == {"SUCCESS", "FAILURE"}
    flaky = [record for record in records if record["name"] == "celery_flaky"]
    assert sorted(record["attempts"] for record in flaky) == [2, 2, 3, 3]
    prometheus = stack.prometheus
    where = f'namespace="{NAMESPACE}",release="{RELEASE}"'
    for expr in (
        f'tasklane_executor_fallbacks_total{{{where},reason="no_workers",component="api"}}',
        f'tasklane_tasks_finished_total{{{where},executor="celery",status="FAILURE",'
        'component="worker"}',
        f'tasklane_tasks_finished_total{{{where},executor="background",status="FAILURE",'
        'component="api"}',
        f'tasklane_task_retries_total{{{where},task="celery_flaky",component="worker"}}',
    ):
        assert series(prometheus, expr), f"no series for {expr}"


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.label)
def test_dashboard_query_returns_data(stack: Stack, target: PanelTarget) -> None:
    """Every panel query, with Grafana's variables filled in, draws at least one line."""
    expr = substitute(target.expr, VARIABLES)
    result = series(stack.prometheus, expr)
    assert has_data(result), f"no finite value for\n{expr}\nresult: {result}"


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.label)
def test_dashboard_query_selects_nothing_of_another_release(
    stack: Stack, target: PanelTarget
) -> None:
    """The release filter holds in every series of every query, fallbacks included."""
    expr = substitute(target.expr, {**VARIABLES, "release": "other"})
    assert series(stack.prometheus, expr) == []


@pytest.mark.parametrize(("name", "expected"), [("namespace", [NAMESPACE]), ("release", [RELEASE])])
def test_template_variable_lists_the_scrape_target_labels(
    stack: Stack, name: str, expected: list[str]
) -> None:
    variable = template_variables(load_dashboard())[name]
    match, label = label_values_query(variable_query(variable))
    assert stack.prometheus.label_values(label, substitute(match, VARIABLES)) == expected


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expression_parses_and_evaluates_in_prometheus(
    stack: Stack, rule: dict[str, Any]
) -> None:
    """Each alert's expression is accepted by the query API, and Prometheus, which loaded the
    rule file itself, evaluates the rule without error."""
    series(stack.prometheus, rule["expr"])

    def evaluated() -> bool:
        loaded = {r["name"]: r for r in stack.prometheus.rules()}
        return loaded[rule["alert"]]["health"] != "unknown"

    poll(evaluated, timeout=10, what=f"{rule['alert']} evaluated")
    loaded = {r["name"]: r for r in stack.prometheus.rules()}[rule["alert"]]
    assert loaded["health"] == "ok", loaded.get("lastError")
