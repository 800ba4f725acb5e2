"""Acceptance for hybrid routing (issue 3) with a real redis-server and real `celery worker`
subprocesses (scripts.harness.celery_processes.CeleryWorker); the api runs in-process
(create_app + TestClient, lifespan included), configured for short heartbeats:

- one worker up: heavy tasks run on it (executor celery, its hostname), light ones in-process,
  both read through GET /api/tasks/{id}/status; GET /api/tasks/executors shows the pool;
- every worker SIGKILLed: heavy tasks run locally within 15 s, counted as
  fallbacks{reason="no_workers"} on GET /metrics; a new worker: Celery again within 5 s;
- scale-from-zero with no worker: heavy tasks wait in the Redis list, PENDING, until a worker
  comes and runs them;
- dispatch deadline: an idempotent task nobody started is taken back and run here, and the late
  worker drops its message: the side effect is applied exactly once.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from app.core.tasks.broker_layout import BROKER_LAYOUT
from scripts.harness.scaled_api import (
    api,
    metric,
    route_now,
    status,
    submit,
    wait_final,
    wait_for,
    wait_route,
    worker,
)

pytestmark = pytest.mark.integration

HEAVY = "celery_effect_once"  # weight="heavy", idempotent
HEAVY_ONCE = "celery_effect_unsafe"  # weight="heavy", not idempotent
LIGHT = "sample_sleep_async"


@pytest.fixture(autouse=True)
def _tasks_find_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sample tasks keep their evidence in REDIS_URL; here they also run in this process.
    monkeypatch.setenv("REDIS_URL", redis_url)


def test_workers_take_heavy_tasks_and_the_api_covers_for_a_dead_pool(
    redis_url: str, tmp_path: Path
) -> None:
    key = f"routing-{uuid.uuid4().hex[:6]}"
    first = worker(redis_url, tmp_path)
    with first, api(redis_url) as client:
        wait_route(client, HEAVY, "celery", timeout=5)
        pool = client.get("/api/tasks/executors").json()
        assert (pool["mode"], pool["executor"], pool["store"]) == ("scaled", "hybrid", "redis")
        assert pool["workers"]["heavy"] == 1
        assert pool["workers"]["light"] == 1
        assert pool["broker_up"] is True
        assert "heavy" in pool["queue_lengths"]

        heavy = wait_final(client, submit(client, HEAVY, key, 0))
        light = wait_final(client, submit(client, LIGHT, 0))
        assert (heavy["status"], heavy["executor"], heavy["worker"]) == (
            "SUCCESS",
            "celery",
            first.hostname,
        )
        assert (light["status"], light["executor"]) == ("SUCCESS", "background")

        first.kill()
        assert wait_route(client, HEAVY, "background", timeout=15) <= 15
        fallbacks = metric(
            client, "tasklane_executor_fallbacks_total", task=HEAVY, reason="no_workers"
        )
        local = [submit(client, HEAVY, key, 0) for _ in range(3)]
        for record in (wait_final(client, task_id) for task_id in local):
            assert (record["status"], record["executor"]) == ("SUCCESS", "background")
        assert (
            metric(client, "tasklane_executor_fallbacks_total", task=HEAVY, reason="no_workers")
            == fallbacks + 3
        )
        assert client.get("/api/tasks/executors").json()["workers"]["heavy"] == 0

        with worker(redis_url, tmp_path) as second:  # returns once its heartbeat is in Redis
            assert wait_route(client, HEAVY, "celery", timeout=5) <= 5
            again = wait_final(client, submit(client, HEAVY, key, 0))
            assert (again["status"], again["executor"], again["worker"]) == (
                "SUCCESS",
                "celery",
                second.hostname,
            )


def test_scale_from_zero_keeps_heavy_tasks_queued_until_a_worker_comes(
    redis_url: str, tmp_path: Path
) -> None:
    key = f"zero-{uuid.uuid4().hex[:6]}"
    broker = redis.Redis.from_url(redis_url, decode_responses=True)
    with api(redis_url, scale_from_zero=True) as client:
        assert route_now(client, HEAVY) == "celery"
        ids = [submit(client, HEAVY, key, 0) for _ in range(3)]

        queued = [status(client, task_id) for task_id in ids]
        assert {(r["status"], r["executor"]) for r in queued} == {("PENDING", "celery")}
        assert BROKER_LAYOUT.waiting(broker, "heavy") == 3
        wait_for(lambda: client.get("/api/tasks/executors").json()["queue_lengths"]["heavy"] == 3)

        with worker(redis_url, tmp_path) as late:
            done = [wait_final(client, task_id) for task_id in ids]
        assert {(r["status"], r["executor"], r["worker"]) for r in done} == {
            ("SUCCESS", "celery", late.hostname)
        }
    assert BROKER_LAYOUT.waiting(broker, "heavy") == 0
    broker.close()


def test_dispatch_deadline_runs_an_idempotent_task_here_exactly_once(
    redis_url: str, tmp_path: Path
) -> None:
    key = f"deadline-{uuid.uuid4().hex[:6]}"
    broker = redis.Redis.from_url(redis_url, decode_responses=True)
    with api(redis_url, scale_from_zero=True, dispatch_deadline=1.0) as client:
        deadline_before = {
            name: metric(client, "tasklane_executor_fallbacks_total", task=name, reason="deadline")
            for name in (HEAVY, HEAVY_ONCE)
        }
        taken = submit(client, HEAVY, key, 0)  # idempotent: taken back after the deadline
        kept = submit(client, HEAVY_ONCE, key, 0)  # not idempotent: only reported

        record = wait_final(client, taken, timeout=20)
        assert (record["status"], record["executor"]) == ("SUCCESS", "background")
        assert status(client, kept)["status"] == "PENDING"
        assert status(client, kept)["executor"] == "celery"
        for name in (HEAVY, HEAVY_ONCE):  # both reported, once each
            wait_for(
                lambda name=name: (
                    metric(
                        client, "tasklane_executor_fallbacks_total", task=name, reason="deadline"
                    )
                    == deadline_before[name] + 1
                )
            )
        assert BROKER_LAYOUT.waiting(broker, "heavy") == 2  # both messages are still in the queue

        # One process, in order: the stale message of `taken` comes first and is dropped.
        with worker(redis_url, tmp_path, concurrency=1):
            late = wait_final(client, kept)
        assert (late["status"], late["executor"]) == ("SUCCESS", "celery")
        assert BROKER_LAYOUT.waiting(broker, "heavy") == 0
        assert status(client, taken)["executor"] == "background"

    assert broker.get(f"{key}:runs:{taken}") == "1"
    assert broker.get(f"{key}:done:{taken}") == "1"
    assert broker.get(f"{key}:runs:{kept}") == "1"
    broker.close()


def test_cancel_terminates_a_running_terminate_safe_task_on_its_worker(
    redis_url: str, tmp_path: Path
) -> None:
    with worker(redis_url, tmp_path) as celery_worker, api(redis_url) as client:
        wait_route(client, "celery_sleep_terminable", "celery", timeout=10)
        task_id = submit(client, "celery_sleep_terminable", 60)
        wait_for(lambda: status(client, task_id)["status"] == "STARTED", timeout=20)

        response = client.post(f"/api/tasks/{task_id}/cancel")
        record = wait_final(client, task_id, timeout=20)

        assert response.status_code == 200
        assert response.json()["outcome"] == "requested"
        assert record["status"] == "CANCELLED"
        assert record["worker"] == celery_worker.hostname
        # The worker lost only that pool child: it keeps serving.
        after = wait_final(client, submit(client, "celery_sleep_terminable", 0))
        assert (after["status"], after["executor"], after["result"]) == (
            "SUCCESS",
            "celery",
            "slept",
        )
        assert celery_worker.alive()
