"""Every Prometheus metric object of tasklane, and nowhere else (DESIGN.md §5: names are API).

Label values: `task` is a registry name, `executor` is background|celery, `queue` a Celery queue
name. Gauges name their `multiprocess_mode` now, so they keep their meaning once several api or
worker processes write to PROMETHEUS_MULTIPROC_DIR: the worker-pool gauges are set by every api
process's WorkerMonitor from the same Redis, so the most recent reading of a live process is the
right one (a dead process's stale file must not win).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter, Gauge

#: Why the hybrid executor ran a task somewhere else than its first choice.
FallbackReason = Literal["no_workers", "broker_down", "saturated", "deadline"]

EXECUTOR_FALLBACKS = Counter(
    "tasklane_executor_fallbacks_total",
    "Tasks the hybrid executor sent somewhere other than the rules' first choice, by reason: "
    "no_workers (heavy ran locally), broker_down (publish failed, ran locally), saturated "
    "(light overflowed to Celery), deadline (no worker started it in time).",
    ["task", "reason"],
)

ROUTING_DECISIONS = Counter(
    "tasklane_routing_decisions_total",
    "Every hybrid routing decision at submit, fallbacks included, by chosen executor.",
    ["task", "executor"],
)

WORKERS_AVAILABLE = Gauge(
    "tasklane_workers_available",
    "Live Celery workers consuming the queue, from their heartbeats.",
    ["queue"],
    multiprocess_mode="livemostrecent",
)

QUEUE_LENGTH = Gauge(
    "tasklane_queue_length",
    "Messages waiting in the queue's Redis lists (base list plus priority sub-lists).",
    ["queue"],
    multiprocess_mode="livemostrecent",
)

BROKER_UP = Gauge(
    "tasklane_broker_up",
    "1 when the last read of the broker's Redis succeeded, else 0.",
    multiprocess_mode="livemostrecent",
)


def count_fallback(task: str, reason: FallbackReason) -> None:
    """One task ran somewhere other than the first choice, for `reason`."""
    EXECUTOR_FALLBACKS.labels(task=task, reason=reason).inc()


def count_routing(task: str, executor: str) -> None:
    """One hybrid routing decision."""
    ROUTING_DECISIONS.labels(task=task, executor=executor).inc()
