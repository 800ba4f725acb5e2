"""What every benchmark shares: its size (Profile), its verdict (Result), alternating rounds.

Rounds alternate the order (baseline first, then tasklane first, ...) so that a machine that
slows down or warms up during the run biases neither side; medians, not means, because one
stalled round on a shared 2-CPU box would otherwise decide the answer.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scripts.harness.processes import RedisServer

Measure = Callable[[], Awaitable[float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """How big each benchmark is: full (`make bench`) or quick (the smoke test)."""

    quick: bool
    #: Alternating rounds per comparison (each round measures baseline and tasklane once).
    rounds: int
    #: Submits per round, benchmarks (a) and (b).
    submits: int
    #: Tasks per round through a worker, benchmark (c).
    e2e_tasks: int
    #: HTTP requests per round and connections held open by the load generator, (d).
    http_requests: int
    http_connections: int
    #: Worker start + kill cycles, (e); heartbeat and monitor interval the api and worker use.
    detection_rounds: int
    heartbeat: float
    monitor_interval: float
    #: Seconds an idle server is left alone before its RSS is read, (f).
    idle_seconds: float


FULL = Profile(
    quick=False,
    rounds=3,
    submits=2000,
    e2e_tasks=2000,
    http_requests=3000,
    http_connections=32,
    detection_rounds=3,
    heartbeat=5.0,  # the defaults the targets are stated for
    monitor_interval=2.0,
    idle_seconds=3.0,
)
QUICK = Profile(
    quick=True,
    rounds=1,
    submits=200,
    e2e_tasks=200,
    http_requests=300,
    http_connections=16,
    detection_rounds=1,
    # Scaled down 5x so one detection cycle fits the smoke test; the targets scale with them.
    heartbeat=1.0,
    monitor_interval=0.4,
    idle_seconds=1.0,
)


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on a result's ratio: at least (`min`) or at most (`max`) `value`."""

    kind: Literal["min", "max"]
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.kind == "min" else ratio <= self.value

    def __str__(self) -> str:
        return f"{'>=' if self.kind == 'min' else '<='} {self.value:g}x"


@dataclass(slots=True, kw_only=True)
class Result:
    """One row of the table and one entry of the JSON file."""

    key: str
    name: str
    unit: str
    baseline: float | None
    tasklane: float
    ratio: float
    #: What the ratio is and which direction is better, printed under the table.
    ratio_means: str
    target: Target
    #: The target as stated in the issue, in the unit of the measurement.
    target_text: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: Why the target is missed and what it would take, from profiling; printed when missed.
    when_missed: str = ""
    #: Anything else worth keeping in the JSON file (per-round latency percentiles...).
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.target.met(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "baseline": self.baseline,
            "tasklane": self.tasklane,
            "ratio": self.ratio,
            "ratio_means": self.ratio_means,
            "target": {"kind": self.target.kind, "ratio": self.target.value},
            "target_text": self.target_text,
            "met": self.met,
            "samples": self.samples,
            "when_missed": self.when_missed,
            "details": self.details,
        }


def compare(
    *,
    key: str,
    name: str,
    unit: str,
    baseline: list[float],
    tasklane: list[float],
    target: Target,
    target_text: str,
    ratio_means: str,
    when_missed: str = "",
    details: dict[str, Any] | None = None,
) -> Result:
    """A Result from per-round samples: medians of each side, ratio = tasklane / baseline."""
    base, ours = statistics.median(baseline), statistics.median(tasklane)
    return Result(
        key=key,
        name=name,
        unit=unit,
        baseline=base,
        tasklane=ours,
        ratio=ours / base if base else float("inf"),
        ratio_means=ratio_means,
        target=target,
        target_text=target_text,
        samples={"baseline": baseline, "tasklane": tasklane},
        when_missed=when_missed,
        details=details or {},
    )


async def alternate(
    rounds: int, baseline: Measure, tasklane: Measure
) -> tuple[list[float], list[float]]:
    """Run both measurements `rounds` times, swapping which goes first every round."""
    base: list[float] = []
    ours: list[float] = []
    for index in range(rounds):
        if index % 2 == 0:
            base.append(await baseline())
            ours.append(await tasklane())
        else:
            ours.append(await tasklane())
            base.append(await baseline())
    return base, ours


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of the benchmark's own on a free loopback port."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@dataclass(frozen=True, slots=True)
class Workspace:
    """Where a benchmark's processes write their logs (kept after the run for diagnosis)."""

    logs: Path

    def clear(self) -> None:
        """Forget the previous run's logs (Celery workers append to theirs)."""
        for path in self.logs.glob("*.log"):
            path.unlink()

    def log_path(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"
