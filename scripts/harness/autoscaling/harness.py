"""Autoscaling harness: the worker pool scaled from zero and back by the chart's own ScaledObject,
with real tasks and real workers, on a machine without a cluster. Plainly: this harness stands
in for KEDA and the HPA controller, which cannot run here; it applies their documented rules to
real inputs and acts on real processes.

Real here:
- the ScaledObject and worker Deployment, as `helm template` renders charts/tasklane with the
  scenario's values (scenarios.py): min/max, pollingInterval, cooldownPeriod,
  stabilization window, triggers, formula, target, terminationGracePeriodSeconds, --queues and
  --concurrency are all read from the rendered objects, none is written down here;
- each trigger's value: KEDA's redis-scaler Lua script EVAL'd on the real redis-server against
  the key the trigger names (triggers.py);
- the api (the hybrid executor with scale-from-zero, in-process) submitting heavy tasks to the
  real Celery queue, and the Celery worker processes (prefork) that run them, keep the
  `active:{queue}` ZSET, heartbeat, and stop with a warm shutdown on SIGTERM.
Modelled (it cannot run here):
- KEDA's operator and the HPA it creates — activation, 0 <-> 1, cooldown, the AverageValue
  proposal with its tolerance, stabilization, rate policies, clamps (autoscaler.py);
- the ReplicaSet controller's choice of which pod to delete (replicaset.py) and the
  kubelet's SIGTERM → grace period → SIGKILL (worker_pool.py); a pod is a local
  CeleryWorker with the rendered --queues, --concurrency and key prefix, not the container's
  whole environment (chart-to-local covers that).
So this shows that the chart's autoscaling configuration, applied by controllers that follow
KEDA's and Kubernetes' documented rules, sizes the real pool correctly; it does not show that a
given KEDA release behaves exactly so. The run's timeline and per-pod and per-task outcomes come
back as a ScenarioResult (JSON-serialisable, report.py writes CSV and PNG).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from app.core.tasks.broker_layout import BROKER_LAYOUT
from scripts.harness.autoscaling.autoscaler import Autoscaler, Decision, ScalingSpec
from scripts.harness.autoscaling.scenarios import Scenario
from scripts.harness.autoscaling.triggers import RedisTrigger, TriggerReader
from scripts.harness.autoscaling.worker_pool import PodRecord, WorkerDeployment
from scripts.harness.chart_to_local import Cluster, find, render
from scripts.harness.scaled_api import HEARTBEAT, api, status, submit

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

#: The heavy, idempotent sample task each scenario submits (scripts/harness/celery_sample_tasks).
TASK = "celery_effect_once"


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedAutoscaling:
    """Everything the harness takes from the rendered chart."""

    spec: ScalingSpec
    triggers: tuple[RedisTrigger, ...]
    deployment: str
    queues: tuple[str, ...]
    concurrency: int
    grace: float
    key_prefix: str

    @classmethod
    def from_objects(cls, objects: list[dict[str, Any]], workdir: Path) -> RenderedAutoscaling:
        (scaled_object,) = find(objects, "ScaledObject")
        target = scaled_object["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment":
            raise ValueError(f"the ScaledObject scales a {target['kind']}, not a Deployment")
        (deployment,) = find(objects, "Deployment", target["name"])
        container_name = (
            target.get("envSourceContainerName")
            or (deployment["spec"]["template"]["spec"]["containers"][0]["name"])
        )
        # The kubelet's view of the container: envFrom + env resolved (chart_to_local).
        container = Cluster(objects, namespace="default", workdir=workdir).container(
            "Deployment", target["name"], container_name
        )
        return cls(
            spec=ScalingSpec.from_scaled_object(scaled_object),
            triggers=tuple(
                RedisTrigger.from_manifest(trigger, container.env)
                for trigger in scaled_object["spec"]["triggers"]
            ),
            deployment=target["name"],
            queues=tuple(_option(container.argv, "--queues").split(",")),
            concurrency=int(_option(container.argv, "--concurrency")),
            grace=float(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
            key_prefix=container.env.get("TASKLANE_KEY_PREFIX", "tasklane:"),
        )

    def summary(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": spec.name,
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "polling_interval": spec.polling_interval,
            "cooldown_period": spec.cooldown_period,
            "scale_down_window": spec.scale_down.window,
            "formula": spec.formula.text,
            "target": spec.target,
            "activation_target": spec.activation_target,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "grace": self.grace,
        }


def _option(argv: Sequence[str], flag: str) -> str:
    if flag not in argv:
        raise ValueError(f"the worker container has no {flag} argument: {list(argv)}")
    return argv[list(argv).index(flag) + 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One poll. queued/active: the trigger values by kind; desired = ceil(value / target), what
    the metric asks for before tolerance, stabilization, clamps and cooldown; replicas: what the
    controllers set; ready: workers up; running: tasks the workers report running."""

    time: float
    queued: float
    active: float
    value: float
    desired: int
    replicas: int
    ready: int
    running: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    task_id: str
    submitted_at: float
    status: str
    executor: str | None
    worker: str | None
    attempts: int
    #: How many times the body started (the sample task counts it in Redis).
    runs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    scenario: str
    autoscaling: dict[str, Any]
    samples: tuple[Sample, ...]
    pods: tuple[PodRecord, ...]
    tasks: tuple[TaskOutcome, ...]
    #: The sample task's side-effect counter: one per task id when nothing ran twice.
    effects: int
    duration: float

    def to_json(self) -> str:
        data = asdict(self)
        data["pods"] = [pod.as_dict() for pod in self.pods]
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ScenarioResult:
        data = json.loads(text)
        return cls(
            scenario=data["scenario"],
            autoscaling=data["autoscaling"],
            samples=tuple(Sample(**s) for s in data["samples"]),
            pods=tuple(PodRecord.from_dict(p) for p in data["pods"]),
            tasks=tuple(TaskOutcome(**t) for t in data["tasks"]),
            effects=data["effects"],
            duration=data["duration"],
        )


def run_scenario(
    scenario: Scenario,
    *,
    redis_url: str,
    workdir: Path,
    progress: Callable[[str], None] = lambda line: None,
    log_level: str = "WARNING",
) -> ScenarioResult:
    """Render, then poll every pollingInterval until the whole backlog is done and the pool is
    back at zero; raises TimeoutError after scenario.deadline seconds. Each worker logs to
    workdir/workers/; the in-process api logs at `log_level`."""
    rendered = RenderedAutoscaling.from_objects(
        render(scenario.chart_values(redis_url), workdir=_folder(workdir / "chart")), workdir
    )
    spec = rendered.spec
    key = f"autoscale-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()

    def clock() -> float:
        """Seconds since the first poll: the time axis of every sample and pod record."""
        return time.monotonic() - started

    progress(f"rendered {spec.name}: {rendered.summary()}")
    with (
        redis.Redis.from_url(redis_url, decode_responses=True) as store,
        # Scale-from-zero: with no worker yet, heavy tasks queue instead of running in-process.
        api(redis_url, scale_from_zero=True, log_level=log_level) as client,
        TriggerReader(rendered.triggers) as reader,
        WorkerDeployment(
            redis_url,
            workdir / "workers",
            name=rendered.deployment,
            queues=rendered.queues,
            concurrency=rendered.concurrency,
            grace=rendered.grace,
            clock=clock,
            heartbeat_interval=HEARTBEAT,
            key_prefix=rendered.key_prefix,
        ) as pool,
    ):
        autoscaler = Autoscaler(spec)
        pending = sorted(scenario.bursts, key=lambda burst: burst.at)
        submitted: dict[str, float] = {}
        samples: list[Sample] = []
        tick = 0
        started = time.monotonic()  # the api is up: time 0 is the first poll
        while True:
            now = clock()
            values = reader.read()
            decision = autoscaler.step(now, values, pool.replicas)
            if decision.replicas != pool.replicas:
                progress(f"{now:6.1f}s {pool.replicas} -> {decision.replicas} ({decision.reason})")
            pool.scale(decision.replicas)
            pool.check()
            samples.append(_sample(rendered, values, decision, pool))
            # Tasks arrive between polls: the next poll is the first to see them.
            while pending and pending[0].at <= now:
                burst = pending.pop(0)
                for _ in range(burst.count):
                    submitted[submit(client, TASK, key, scenario.task_seconds)] = now
                progress(f"{now:6.1f}s submitted {burst.count} x {TASK}")
            settled = not pending and decision.replicas == 0 and pool.settled()
            if settled and _all_final(client, submitted):
                break
            if now > scenario.deadline:
                raise TimeoutError(
                    f"scenario {scenario.name} not back at zero after {scenario.deadline} s; "
                    f"last samples: {samples[-3:]}; pods: {pool.records()}"
                )
            tick += 1
            # The controllers' own period, not a wait for some condition.
            time.sleep(max(0.0, tick * spec.polling_interval - clock()))
        tasks = tuple(
            _outcome(client, store, key, task_id, at) for task_id, at in submitted.items()
        )
        pods = tuple(pool.records())
        effects = int(store.get(f"{key}:effects") or 0)
    return ScenarioResult(
        scenario=scenario.name,
        autoscaling=rendered.summary(),
        samples=tuple(samples),
        pods=pods,
        tasks=tasks,
        effects=effects,
        duration=clock(),
    )


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sample(
    rendered: RenderedAutoscaling,
    values: Mapping[str, float],
    decision: Decision,
    pool: WorkerDeployment,
) -> Sample:
    # Messages waiting in the queues' lists (base list and priority sub-lists); the rest of
    # the formula's triggers count running tasks.
    lists = {name for queue in rendered.queues for name in BROKER_LAYOUT.queue_lists(queue)}
    queued = sum(values[t.name] for t in rendered.triggers if t.list_name in lists)
    return Sample(
        time=decision.time,
        queued=queued,
        active=sum(values.values()) - queued,
        value=decision.value,
        desired=math.ceil(decision.value / rendered.spec.target),
        replicas=decision.replicas,
        ready=pool.ready,
        running=pool.running(),
        reason=decision.reason,
    )


def _all_final(client: TestClient, submitted: Mapping[str, float]) -> bool:
    return all(
        status(client, task_id)["status"] in {"SUCCESS", "FAILURE", "CANCELLED"}
        for task_id in submitted
    )


def _outcome(
    client: TestClient, store: redis.Redis, key: str, task_id: str, at: float
) -> TaskOutcome:
    record = status(client, task_id)
    return TaskOutcome(
        task_id=task_id,
        submitted_at=round(at, 3),
        status=record["status"],
        executor=record.get("executor"),
        worker=record.get("worker"),
        attempts=int(record.get("attempts") or 0),
        runs=int(store.get(f"{key}:runs:{task_id}") or 0),
    )
