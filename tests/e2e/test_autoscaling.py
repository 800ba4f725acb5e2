"""The chart's ScaledObject scaling real Celery workers from zero and back
(scripts/harness/autoscaling/harness.py: real redis-server, api, workers and KEDA's Lua; KEDA +
HPA + ReplicaSet + kubelet modelled).

One run of `scripts/autoscale-demo --quick` (about a minute, most of it the chart's minimum
cooldown) feeds every scenario test; the others are fast."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from scripts.harness.autoscaling.autoscaler import Autoscaler
from scripts.harness.autoscaling.harness import TASK, RenderedAutoscaling, ScenarioResult
from scripts.harness.autoscaling.report import CSV_COLUMNS
from scripts.harness.autoscaling.scenarios import QUICK, Burst, Scenario
from scripts.harness.autoscaling.triggers import RedisTrigger, TriggerReader
from scripts.harness.autoscaling.worker_pool import WorkerDeployment
from scripts.harness.chart_to_local import render
from scripts.harness.processes import REPO_ROOT
from scripts.harness.scaled_api import HEARTBEAT, api, submit, wait_final, wait_for

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class DemoRun:
    out: Path
    stdout: str
    result: ScenarioResult


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """scripts/autoscale-demo --quick, once for the module."""
    out = tmp_path_factory.mktemp("autoscale-demo-out")
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "autoscale-demo"),
            "--quick",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=QUICK.deadline + 60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    result = ScenarioResult.from_json((out / "run.json").read_text())
    return DemoRun(out=out, stdout=completed.stdout, result=result)


def test_a_backlog_scales_from_zero_to_several_workers_and_back_to_zero(demo_run: DemoRun) -> None:
    result, settings = demo_run.result, demo_run.result.autoscaling
    replicas = [sample.replicas for sample in result.samples]
    assert replicas[0] == 0
    peak = max(replicas)
    assert 1 < peak <= settings["max_replicas"]
    assert replicas[-1] == 0
    # The poll that first sees the backlog takes the pool from 0 to what it asks for.
    loaded = next(sample for sample in result.samples if sample.queued > 0)
    before = result.samples[result.samples.index(loaded) - 1]
    assert before.replicas == 0
    assert loaded.replicas == min(settings["max_replicas"], loaded.desired) == peak
    # One worker per replica: every pod started and stopped cleanly.
    assert len(result.pods) >= peak
    assert all(pod.ready_since is not None and pod.exit_code == 0 for pod in result.pods)


def test_scale_to_zero_waits_for_the_cooldown_after_the_last_activity(demo_run: DemoRun) -> None:
    result, settings = demo_run.result, demo_run.result.autoscaling
    samples = result.samples
    last_busy = max(i for i, s in enumerate(samples) if s.value > settings["activation_target"])
    zero = next(i for i in range(last_busy, len(samples)) if samples[i].replicas == 0)
    idle_for = samples[zero].time - samples[last_busy].time
    assert (
        settings["cooldown_period"]
        < idle_for
        <= settings["cooldown_period"] + 3 * (settings["polling_interval"])
    )
    # Meanwhile the HPA keeps at least its minimum of one worker.
    assert all(sample.replicas >= 1 for sample in samples[last_busy:zero])
    assert samples[zero - 1].replicas == 1


def test_scale_down_never_sizes_the_pool_below_its_running_tasks(demo_run: DemoRun) -> None:
    """Tasks outlast the stabilization window, so a formula blind to running tasks would drop
    to one worker while several still run. `running` is what the workers themselves report,
    not a trigger value, so a chart without the active_* triggers fails here."""
    result, settings = demo_run.result, demo_run.result.autoscaling
    samples = result.samples
    downs = [now for before, now in itertools.pairwise(samples) if now.replicas < before.replicas]
    assert downs, "the run never scaled down"
    for sample in downs:
        assert sample.replicas * settings["concurrency"] >= sample.running, sample


def test_a_worker_stopped_while_busy_finishes_its_tasks_before_exiting(demo_run: DemoRun) -> None:
    """Kubernetes picks the pod to delete without knowing which worker is busy; the warm
    shutdown on SIGTERM keeps its tasks. A pod killed after the grace period would have its
    tasks redelivered and run again (exactly-once effect: the next test). Whether this run
    deleted a busy pod depends on timing; the test after the scenario ones always does."""
    result, grace = demo_run.result, demo_run.result.autoscaling["grace"]
    tasks = {task.task_id: task for task in result.tasks}
    stopped = [pod for pod in result.pods if pod.sigterm_at is not None]
    assert len(stopped) == len(result.pods)
    for pod in stopped:
        assert pod.exited_at is not None
        assert pod.exited_at - pod.sigterm_at <= grace + 1, pod
        for task_id in pod.busy_at_sigterm:
            task = tasks[task_id]
            assert task.status == "SUCCESS", task
            if pod.killed:
                assert task.runs >= 2, task  # redelivered after the kill
            else:
                assert (task.worker, task.runs) == (pod.name, 1), task  # finished in place
        assert pod.killed or pod.exit_code == 0, pod


def test_the_whole_backlog_completes_on_the_workers_each_effect_once(demo_run: DemoRun) -> None:
    result = demo_run.result
    pods = {pod.name for pod in result.pods}
    assert len(result.tasks) == QUICK.task_count
    for task in result.tasks:
        assert task.status == "SUCCESS", task
        assert task.executor == "celery", task  # queued for the pool, not run in the api
        assert task.worker in pods, task
        assert task.runs >= 1, task
    assert result.effects == QUICK.task_count


def test_the_demo_prints_and_writes_the_timeline_as_csv_and_png(demo_run: DemoRun) -> None:
    csv_path, png_path, json_path = (
        demo_run.out / "timeline.csv",
        demo_run.out / "timeline.png",
        demo_run.out / "run.json",
    )
    assert demo_run.stdout.split() == [str(csv_path), str(png_path), str(json_path)]
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS)
    assert len(lines) == 1 + len(demo_run.result.samples)
    assert [int(line.split(",")[5]) for line in lines[1:]] == [
        sample.replicas for sample in demo_run.result.samples
    ]
    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


# -- the real pieces on their own ----------------------------------------------------------------


def test_scaling_down_a_busy_worker_lets_its_task_finish_first(
    redis_url: str, tmp_path: Path
) -> None:
    """Deterministic version of what the scenario may or may not hit: the pod deleted is busy."""
    pool = WorkerDeployment(
        redis_url,
        tmp_path / "workers",
        name="busy-test",
        queues=("heavy",),
        concurrency=1,
        grace=30,
        clock=time.monotonic,
        heartbeat_interval=HEARTBEAT,
    )
    with pool, api(redis_url, scale_from_zero=True, log_level="WARNING") as client:
        pool.scale(1)
        wait_for(lambda: pool.ready == 1, 30, "the worker up")
        task_id = submit(client, TASK, "busy", 2.0)
        wait_for(lambda: pool.running() == 1, 15, "the task running")
        pool.scale(0)
        assert pool.replicas == 0
        wait_for(pool.settled, 30, "the worker gone")
        (stopped,) = pool.records()
        record = wait_final(client, task_id, timeout=5)
    assert stopped.busy_at_sigterm == (task_id,)
    assert (stopped.exit_code, stopped.killed) == (0, False)
    assert stopped.exited_at - stopped.sigterm_at >= 1.0  # it waited for the task
    assert (record["status"], record["worker"], record["attempts"]) == ("SUCCESS", stopped.name, 1)


def test_keda_lua_counts_every_key_type_the_way_the_scaler_does(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush("a-list", "1", "2", "3")
    client.zadd("a-zset", {"x": 1, "y": 2})
    client.sadd("a-set", "p", "q", "r", "s")
    client.hset("a-hash", mapping={"k": "v"})
    client.close()
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    triggers = [
        RedisTrigger(name=key, list_name=key, host=host, port=int(port), database=0)
        for key in ("a-list", "a-zset", "a-set", "a-hash", "missing")
    ]
    with TriggerReader(triggers) as reader:
        assert reader.read() == {"a-list": 3, "a-zset": 2, "a-set": 4, "a-hash": 1, "missing": 0}


def test_every_autoscaling_number_comes_from_the_render(tmp_path: Path) -> None:
    """Other values in, other numbers out: nothing is fixed in the harness."""
    scenario = Scenario(
        name="odd",
        bursts=(Burst(at=0, count=1),),
        task_seconds=7.5,
        concurrency=3,
        max_replicas=7,
        polling_interval=2,
        stabilization_window=11,
        deadline=1,
    )
    values = scenario.chart_values("redis://127.0.0.1:6390/4")
    values["celery"]["worker"]["queues"] = ["video", "light"]
    # Heavy tasks go to "video" (the chart refuses a heavy queue no pool consumes).
    values["celery"]["heavyQueue"] = "video"
    values["keyPrefix"] = "other:"
    rendered = RenderedAutoscaling.from_objects(render(values, workdir=tmp_path), tmp_path)
    spec = rendered.spec
    assert (spec.max_replicas, spec.polling_interval, spec.scale_down.window) == (7, 2, 11)
    assert (spec.cooldown_period, rendered.grace) == (39, 38)  # ceil(7.5) + 30, + 1
    assert (rendered.concurrency, spec.target, rendered.queues) == (3, 3, ("video", "light"))
    assert rendered.key_prefix == "other:"
    by_name = {trigger.name: trigger for trigger in rendered.triggers}
    assert by_name["active_video"].list_name == "other:active:video"
    assert {(t.host, t.port, t.database) for t in rendered.triggers} == {("127.0.0.1", 6390, 4)}
    assert spec.formula.names == set(by_name)


def test_a_backlog_only_in_priority_sub_lists_scales_the_pool_out(
    redis_url: str, tmp_path: Path
) -> None:
    """Tasks submitted with priorities 3-9 wait in kombu's sub-lists (Q:3, Q:6, Q:9), never in
    the base list: the chart's ScaledObject still counts them, and KEDA's rules take the pool
    from zero to as many workers as the backlog asks for."""
    values = QUICK.chart_values(redis_url)
    rendered = RenderedAutoscaling.from_objects(render(values, workdir=tmp_path), tmp_path)
    (queue,) = {"heavy"} & set(rendered.queues)
    priorities = [3, 5, 6, 8, 9, 9, 4, 7]
    with api(redis_url, scale_from_zero=True, log_level="WARNING") as client:
        for priority in priorities:
            body = {"name": TASK, "args": ["sub-lists", 1.0], "priority": priority}
            response = client.post("/api/tasks", json=body)
            assert response.status_code == 202, response.text
            record = client.get(f"/api/tasks/{response.json()['task_id']}/status").json()
            assert (record["executor"], record["priority"]) == ("celery", priority)
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen(queue) == 0  # nothing in the base list
    assert sum(broker.llen(f"{queue}:{step}") for step in (3, 6, 9)) == len(priorities)
    broker.close()

    with TriggerReader(rendered.triggers) as reader:
        triggers = reader.read()
    decision = Autoscaler(rendered.spec).step(0.0, triggers, 0)

    assert sum(triggers.values()) == len(priorities)
    wanted = -(-len(priorities) // rendered.concurrency)  # ceil: 8 tasks, 2 per worker
    assert decision.active
    assert decision.replicas == min(rendered.spec.max_replicas, wanted) > 1
