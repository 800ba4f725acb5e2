"""Autoscaling scenarios: when heavy tasks arrive, how long each runs, and the chart values the
ScaledObject is rendered with. The harness reads every autoscaling number from the rendered
objects; this is the only place those numbers are chosen.

The chart refuses a cooldownPeriod that does not exceed the worker's termination grace period,
and a grace period below tasks.timeoutSeconds + 30 (Celery's hard-limit margin), so the pool
idles at one worker for at least tasks.timeoutSeconds + 31 s (36 s in the quick scenario)
before it scales to zero: most of a run's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.config import Settings

#: Celery's hard-limit margin, which the chart adds to the task timeout for the smallest grace
#: period it accepts (the chart passes the same number: tests/chart/test_worker.py).
TIME_LIMIT_MARGIN = math.ceil(Settings.model_fields["time_limit_margin"].default)


@dataclass(frozen=True, slots=True, kw_only=True)
class Burst:
    """`count` heavy tasks submitted `at` seconds after the run starts."""

    at: float
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    bursts: tuple[Burst, ...]
    #: How long each heavy task (celery_effect_once) sleeps.
    task_seconds: float
    concurrency: int
    max_replicas: int
    polling_interval: int
    stabilization_window: int
    #: The run fails if it has not scaled back to zero by then (seconds).
    deadline: float

    @property
    def task_count(self) -> int:
        return sum(burst.count for burst in self.bursts)

    def chart_values(self, redis_url: str) -> dict[str, Any]:
        """Values for `helm template`: scaled mode, the ScaledObject forced, Redis external
        (the local redis-server, so KEDA's trigger address is the one the workers use)."""
        timeout = math.ceil(self.task_seconds)
        grace = timeout + TIME_LIMIT_MARGIN  # the smallest grace the chart accepts
        return {
            "celery": {
                "enabled": True,
                "worker": {
                    "concurrency": self.concurrency,
                    "terminationGracePeriodSeconds": grace,
                    "autoscaling": {
                        "keda": {
                            "force": True,
                            "minReplicaCount": 0,
                            "maxReplicaCount": self.max_replicas,
                            "pollingInterval": self.polling_interval,
                            "cooldownPeriod": grace + 1,
                            "scaleDownStabilizationWindowSeconds": self.stabilization_window,
                        }
                    },
                },
            },
            "tasks": {"timeoutSeconds": timeout},
            "redis": {"external": {"url": redis_url}},
        }


#: The test's run (~55 s): one backlog larger than the pool can take at once, tasks longer than
#: the stabilization window so a scale-down that ignored running tasks would show.
QUICK = Scenario(
    name="quick",
    bursts=(Burst(at=0, count=9),),
    task_seconds=5,
    concurrency=2,
    max_replicas=3,
    polling_interval=1,
    stabilization_window=3,
    deadline=150,
)

#: The demo's run (~80 s): a backlog, a partial scale-down, a second burst, then zero.
DEMO = Scenario(
    name="demo",
    bursts=(Burst(at=0, count=12), Burst(at=28, count=6)),
    task_seconds=6,
    concurrency=2,
    max_replicas=4,
    polling_interval=1,
    stabilization_window=5,
    deadline=300,
)

SCENARIOS = {scenario.name: scenario for scenario in (QUICK, DEMO)}
