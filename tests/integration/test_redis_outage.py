"""Acceptance (issue 3): Redis stopped under a running hybrid api and a real `celery worker`
(scripts.harness.celery_processes.CeleryWorker) on a real redis-server.

- Redis (store + broker) stopped: every submit answers 503 with Retry-After or runs locally,
  never a 500; /healthz stays 200; after the same redis-server comes back on its port, heavy
  tasks run locally until a worker beats again, then on Celery, without restarting the api.
- Only the broker stopped (records in another Redis): heavy tasks run in-process, counted as
  fallbacks{reason="broker_down"}, and go back to Celery once the broker answers.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.presence import WorkerKeys
from scripts.harness.celery_processes import CeleryWorker
from scripts.harness.processes import RedisServer
from scripts.harness.scaled_api import (
    HEARTBEAT,
    api,
    executors,
    metric,
    post_task,
    route_now,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.integration

HEAVY = "celery_effect_once"  # weight="heavy", idempotent
LIGHT = "sample_sleep_async"


@pytest.fixture(autouse=True)
def _tasks_find_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sample tasks keep their evidence in REDIS_URL; here they also run in this process.
    monkeypatch.setenv("REDIS_URL", redis_url)


def outage_api(redis_url: str, broker_url: str | None = None) -> ContextManager[TestClient]:
    """The hybrid api with a short publish timeout; a 500 stays a response to assert on."""
    return api(
        redis_url,
        celery_broker_url=broker_url or redis_url,
        publish_timeout=1.0,
        raise_server_exceptions=False,
    )


def submit_accepted(client: TestClient, name: str, *args: Any) -> str:
    """Submit like a client honouring Retry-After: a 503 (never a 500) is retried, twice."""
    for _ in range(3):
        response = post_task(client, name, *args)
        if response.status_code == 202:
            return response.json()["task_id"]
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        time.sleep(0.5)
    raise AssertionError(f"submit of {name} still refused: {response.text}")


def test_redis_outage_is_503_or_local_never_500_and_celery_routing_resumes(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    key = f"outage-{uuid.uuid4().hex[:6]}"
    first = CeleryWorker(redis_url, log_path=tmp_path / "first.log", heartbeat_interval=HEARTBEAT)
    with first, outage_api(redis_url) as client:
        wait_for(lambda: route_now(client, HEAVY) == "celery", 5, "heavy routed to celery")
        before = wait_final(client, post_task(client, HEAVY, key, 0).json()["task_id"])
        assert (before["executor"], before["worker"]) == ("celery", first.hostname)

        redis_server.stop()
        try:
            wait_for(lambda: executors(client)["broker_up"] is False, 5, "broker seen down")
            for name, args in [(HEAVY, (key, 0)), (LIGHT, (0,))] * 3:
                started = time.monotonic()
                response = post_task(client, name, *args)
                assert response.status_code in (202, 503), response.text
                if response.status_code == 503:
                    assert int(response.headers["Retry-After"]) >= 1
                    assert response.json()["error"] in ("StoreUnavailable", "ExecutorUnavailable")
                assert time.monotonic() - started < 10
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            assert client.get("/metrics").status_code == 200
            # The pool is replaced during the outage (a pod rescheduled): the api must find the
            # new worker by its heartbeats alone. (A worker that lives through the outage is the
            # worker plane's test: its pool processes must reconnect their own Redis clients.)
            first.kill()
        finally:
            redis_server.start()

        # Same port, empty data: no worker yet, so heavy tasks run here...
        wait_for(lambda: executors(client)["broker_up"] is True, 10, "broker seen up")
        assert route_now(client, HEAVY) == "background"
        local = wait_final(client, submit_accepted(client, HEAVY, key, 0))
        assert (local["status"], local["executor"]) == ("SUCCESS", "background")
        # ...until a worker beats again: then Celery, without restarting the api.
        with CeleryWorker(
            redis_url, log_path=tmp_path / "second.log", heartbeat_interval=HEARTBEAT
        ) as second:
            wait_for(lambda: route_now(client, HEAVY) == "celery", 5, "celery routing back")
            assert client.get("/readyz").status_code == 200
            after = wait_final(client, submit_accepted(client, HEAVY, key, 0))
            assert (after["status"], after["executor"], after["worker"]) == (
                "SUCCESS",
                "celery",
                second.hostname,
            )
        light = wait_final(client, submit_accepted(client, LIGHT, 0))
        assert (light["status"], light["executor"]) == ("SUCCESS", "background")


def test_broker_down_with_records_elsewhere_runs_heavy_tasks_locally(redis_url: str) -> None:
    key = f"broker-{uuid.uuid4().hex[:6]}"
    broker = RedisServer()
    broker.start()
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = WorkerKeys("tasklane:")
    # A worker announced where workers write heartbeats (the records' Redis), live for 2 min.
    store.zadd(keys.workers, {"announced@host": time.time() + 120})
    store.hset(keys.worker("announced@host"), mapping={"queues": "light,heavy", "concurrency": 1})
    try:
        with outage_api(redis_url, broker_url=broker.url) as client:
            wait_for(lambda: route_now(client, HEAVY) == "celery", 5, "heavy routed to celery")
            queued = post_task(client, HEAVY, key, 0).json()["task_id"]
            assert BROKER_LAYOUT.waiting(broker.client(), "heavy") == 1
            assert client.get(f"/api/tasks/{queued}/status").json()["executor"] == "celery"

            broker.stop()
            fallbacks = metric(
                client, "tasklane_executor_fallbacks_total", task=HEAVY, reason="broker_down"
            )
            local = []
            for _ in range(3):
                response = post_task(client, HEAVY, key, 0)
                assert response.status_code == 202, response.text
                local.append(response.json()["task_id"])
            for task_id in local:
                record = wait_final(client, task_id)
                assert (record["status"], record["executor"]) == ("SUCCESS", "background")
            # Each one fell back: at publish (rule 4) or, once the monitor saw it, at routing.
            assert (
                metric(
                    client, "tasklane_executor_fallbacks_total", task=HEAVY, reason="broker_down"
                )
                == fallbacks + 3
            )
            assert client.get("/healthz").status_code == 200

            broker.start()
            wait_for(lambda: executors(client)["broker_up"] is True, 10, "broker seen up")
            assert route_now(client, HEAVY) == "celery"
            again = post_task(client, HEAVY, key, 0).json()["task_id"]
            assert client.get(f"/api/tasks/{again}/status").json()["executor"] == "celery"
            # A restarted, empty broker got it.
            assert BROKER_LAYOUT.waiting(broker.client(), "heavy") == 1
    finally:
        store.close()
        broker.cleanup()
