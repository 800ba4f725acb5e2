"""`tasklane status` (app/status.py, app/status_render.py) against a real redis-server: workers
announce themselves with the worker's own heartbeat code (app.core.tasks.presence) or are real
`celery worker` subprocesses; queues are real Redis lists (base + kombu priority sub-lists);
failures are records in the real store. Assertions read the rendered tables and the --json."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from app import cli
from app.core.tasks.models import TaskError, TaskResult, TaskStatus, utcnow
from app.core.tasks.presence import WorkerInfo, WorkerKeys, write_heartbeat
from app.core.tasks.store.redis import RedisStore

KEYS = WorkerKeys()
POD = "celery@demo-tasklane-worker-7d9c5b8f4-x2x7k"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test sets reaches Settings."""
    for name in list(os.environ):
        if name.startswith(("TASKLANE_", "CELERY_")) or name in ("REDIS_URL", "HEAVY_TASKS"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def scaled(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """Scaled-mode settings on the session's redis-server; returns a client for its keys."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CELERY_BROKER_URL", redis_url)
    return redis.Redis.from_url(redis_url, decode_responses=True)


def beat(client: redis.Redis, hostname: str, *, age: float = 0.0, version: str = "9.9.9") -> None:
    """A heartbeat written by the worker's own code, `age` seconds old."""
    info = WorkerInfo(
        hostname=hostname,
        queues=("light", "heavy"),
        concurrency=4,
        pid=4242,
        version=version,
        started=time.time(),
    )
    write_heartbeat(client, KEYS, info, interval=5.0)
    if age:
        client.zadd(KEYS.workers, {hostname: time.time() - age})


async def record_failures(redis_url: str, count: int) -> list[str]:
    store = RedisStore(redis_url)
    ids = []
    for index in range(count):
        task_id = f"failed-{index}-{uuid.uuid4().hex[:6]}"
        await store.create(
            TaskResult(
                task_id=task_id,
                name="process_speak_audio",
                status=TaskStatus.FAILURE,
                executor="celery",
                queue="heavy",
                error=TaskError(type="ValueError", message=f"bad audio [{index}]"),
                submitted_at=utcnow() + timedelta(seconds=index),
                finished_at=utcnow() + timedelta(seconds=index),
                worker=POD,
            )
        )
        ids.append(task_id)
    await store.create(
        TaskResult(
            task_id="fine",
            name="send_notification",
            status=TaskStatus.SUCCESS,
            executor="background",
            queue="light",
        )
    )
    await store.close()
    return ids


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["status", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def status_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = status(capsys, "--json", *args)
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def route(report: dict[str, Any], task: str) -> dict[str, Any]:
    return next(entry for entry in report["routes"] if entry["task"] == task)


def test_report_shows_workers_queues_routes_and_failures(
    redis_url: str,
    scaled: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TASKLANE_ROUTES", "send_notification=celery")
    beat(scaled, POD, age=2.0)
    beat(scaled, "celery@gone", age=120.0)
    scaled.rpush("heavy", "m1", "m2")
    scaled.rpush("heavy:3", "p3")
    scaled.rpush("heavy:9", "p9")
    scaled.zadd(KEYS.active("heavy"), {"t1": 1.0, "t2": 2.0})
    failed = asyncio.run(record_failures(redis_url, 3))

    code, out, err = status(capsys)

    assert code == 0, err
    assert "mode scaled, executor hybrid, broker up" in out
    assert "Live workers (1)" in out
    assert POD in out
    assert "9.9.9" in out
    assert "stale heartbeats (not counted): celery@gone" in out
    heavy_row = next(line for line in out.splitlines() if line.startswith("│ heavy "))
    assert [cell.strip() for cell in heavy_row.strip("│").split("│")] == [
        "heavy",
        "4",
        "2/1/0/1",
        "2",
        "1",
    ]
    speak = next(line for line in out.splitlines() if "│ process_speak_audio" in line)
    assert "heavy" in speak
    assert "celery" in speak
    notify = next(line for line in out.splitlines() if "│ send_notification" in line)
    assert "celery" in notify  # pinned
    assert "Recent failures (3)" in out
    assert "ValueError: bad audio [2]" in out  # brackets survive rich's markup

    report = status_json(capsys)
    (worker,) = report["workers"]
    assert (worker["hostname"], worker["concurrency"], worker["version"]) == (POD, 4, "9.9.9")
    assert worker["queues"] == ["light", "heavy"]
    assert 1.5 <= worker["heartbeat_age"] < 15
    assert report["stale_workers"] == ["celery@gone"]
    heavy = next(queue for queue in report["queues"] if queue["name"] == "heavy")
    assert heavy == {
        "name": "heavy",
        "waiting": 4,
        "by_priority": {"0": 2, "3": 1, "6": 0, "9": 1},
        "active": 2,
        "workers": 1,
    }
    assert route(report, "process_speak_audio")["route"] == "celery"
    assert route(report, "calculate_rating") == {
        "task": "calculate_rating",
        "weight": "light",
        "queue": "light",
        "pin": None,
        "route": "background",
        "reason": None,
    }
    assert route(report, "send_notification")["pin"] == "celery"
    assert [failure["task_id"] for failure in report["failures"]] == failed[::-1]
    assert report["failures"][0]["error_type"] == "ValueError"
    assert report["failures"][0]["error_message"] == "bad audio [2]"
    assert report["failures"][0]["worker"] == POD
    assert report["broker_up"] is True
    assert report["kubernetes"] == {"enabled": False}

    assert len(status_json(capsys, "--failures", "1")["failures"]) == 1


def test_routes_say_what_the_hybrid_would_do_with_no_live_worker(
    scaled: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    beat(scaled, POD, age=60.0)  # dead

    report = status_json(capsys)

    assert report["workers"] == []
    assert route(report, "process_speak_audio")["route"] == "background"
    assert route(report, "process_speak_audio")["reason"] == "no_workers"
    code, out, _ = status(capsys)
    assert code == 0
    assert "(none)" in out
    assert "no_workers" in out

    monkeypatch.setenv("TASKLANE_SCALE_FROM_ZERO", "true")
    assert route(status_json(capsys), "process_speak_audio")["route"] == "celery"


def test_single_mode_routes_everything_in_process(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)

    report = status_json(capsys)

    assert (report["mode"], report["executor"]) == ("single", "background")
    assert {entry["route"] for entry in report["routes"]} == {"background"}


def test_redis_unreachable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.harness.processes import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")

    code, out, err = status(capsys)

    assert code == 2
    assert out == ""
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in err
    assert "secret" not in err
    assert status(capsys, "--json")[0] == 2


def test_redis_not_configured_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = status(capsys)

    assert code == 2
    assert "no Redis configured: set REDIS_URL" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hostname", "celery@x"], "--hostname goes with --worker"),
        (["--worker", "--json"], "--json goes with the report"),
    ],
)
def test_worker_only_options_stay_with_the_probe(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = status(capsys, *argv)

    assert code == 2
    assert message in err


def test_the_liveness_probe_is_unchanged(
    scaled: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    beat(scaled, POD)

    assert status(capsys, "--worker", "--hostname", POD)[0] == 0
    assert status(capsys, "--worker", "--hostname", "celery@missing")[0] == 1


def test_kubernetes_view_joins_the_report_when_on(
    scaled: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """No cluster exists here: tests.support.kube_api.FakeKubeApi stands in for the API server."""
    from tests.support.kube_api import FakeKubeApi

    beat(scaled, POD)  # fresh, but its Deployment was scaled to zero
    with FakeKubeApi() as kube:
        kube.add_deployment("demo-tasklane-worker", replicas=0)
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path)))
        monkeypatch.setenv("TASKLANE_KUBERNETES", "on")
        monkeypatch.setenv("TASKLANE_WORKER_DEPLOYMENT", "demo-tasklane-worker")

        report = status_json(capsys)
        code, out, _ = status(capsys)

    assert report["kubernetes"]["held_at_zero"] is True
    assert report["kubernetes"]["deployment"]["replicas"] == 0
    assert route(report, "process_speak_audio")["reason"] == "no_workers"
    assert code == 0
    assert "Kubernetes (namespace default)" in out
    assert "held at zero" in out
    assert kube.open_watches() == 0  # listed once, never watched


def test_every_worker_pool_of_the_release_shows_with_its_queues(
    scaled: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """TASKLANE_WORKER_SELECTOR (what the chart sets): one row per pool, the held one marked;
    its queue's tasks run in-process while the other pool's queue stays served."""
    from tests.support.kube_api import FakeKubeApi

    labels = {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "worker"}
    beat(scaled, "celery@demo-tasklane-worker-heavy-7d9c5b8f4-x2x7k")  # draining
    with FakeKubeApi() as kube:
        for pool, replicas in (("heavy", 0), ("light", 2)):
            kube.add_deployment(
                f"demo-tasklane-worker-{pool}",
                replicas=replicas,
                labels={**labels, "tasklane.io/pool": pool},
                annotations={"tasklane.io/queues": pool},
            )
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path)))
        monkeypatch.setenv("TASKLANE_KUBERNETES", "on")
        monkeypatch.setenv(
            "TASKLANE_WORKER_SELECTOR",
            "app.kubernetes.io/instance=demo,app.kubernetes.io/component=worker",
        )

        report = status_json(capsys)
        code, out, _ = status(capsys)

    pools = {p["deployment"]["name"]: p for p in report["kubernetes"]["pools"]}
    assert {name: p["queues"] for name, p in pools.items()} == {
        "demo-tasklane-worker-heavy": ["heavy"],
        "demo-tasklane-worker-light": ["light"],
    }
    assert pools["demo-tasklane-worker-heavy"]["held_at_zero"] is True
    assert pools["demo-tasklane-worker-light"]["held_at_zero"] is False
    assert route(report, "process_speak_audio")["reason"] == "no_workers"
    assert code == 0
    assert "Deployment demo-tasklane-worker-heavy" in out
    assert "queues heavy - held at zero" in out
    assert "Deployment demo-tasklane-worker-light" in out


@pytest.mark.integration
def test_report_with_a_real_worker_and_a_real_failure(
    redis_url: str, scaled: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.harness.celery_processes import CeleryWorker
    from scripts.harness.scaled_api import api, submit, wait_final

    with (
        CeleryWorker(redis_url, log_path=tmp_path / "worker.log", concurrency=3) as worker,
        api(redis_url, routes={"celery_flaky": "celery"}) as http,
    ):
        failed = wait_final(http, submit(http, "celery_flaky", 0))  # fails every attempt
        assert (failed["status"], failed["executor"]) == ("FAILURE", "celery")

        report = status_json(capsys)

    (row,) = [entry for entry in report["workers"] if entry["hostname"] == worker.hostname]
    assert row["concurrency"] == 3
    assert row["pid"] == worker.pid
    assert row["version"] not in ("", "?")
    assert row["heartbeat_age"] < 1.5
    assert route(report, "celery_effect_once")["route"] == "celery"
    (failure,) = [entry for entry in report["failures"] if entry["task_id"] == failed["task_id"]]
    assert failure["error_type"] == "ValueError"
    assert "fails on purpose" in failure["error_message"]
    assert failure["worker"] == worker.hostname
