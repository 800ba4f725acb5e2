"""Every Prometheus metric object of tasklane, and nowhere else (DESIGN.md §5: names are API).

Label values: `task` is a registry name, `executor` is background|celery, `queue` a Celery queue
name, `status` a final TaskStatus. Each transition is written by exactly one process (the api
for submits and in-process runs, a worker pool child for the tasks it runs), and that process
counts it: summed over processes, counts are complete, never doubled.

Gauges name their `multiprocess_mode`, because several api or worker processes write to
PROMETHEUS_MULTIPROC_DIR: the worker-pool gauges are set by every api process's WorkerMonitor
from the same Redis, so the most recent reading of a live process is the right one; tasks in
progress are per process, so live processes are summed. "live" modes drop a dead process's
file (app/core/metrics_exposition.py sweeps them at each scrape).
"""

from __future__ import annotations

import threading
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

#: Why the hybrid executor ran a task somewhere else than its first choice.
FallbackReason = Literal["no_workers", "broker_down", "saturated", "deadline"]
#: Why unacknowledged broker messages were put back on their queues (app/core/tasks/recovery.py).
RecoveryReason = Literal["worker_dead", "worker_restarted"]

#: Runtime buckets: sub-second notifications up to the 300 s audio analysis and beyond.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Queue wait: from submit to start; a backlog waiting for scale-from-zero takes minutes.
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Time inside submit(): validation, one store write, one publish.
SUBMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
#: HTTP handler latency, as most FastAPI exporters bucket it.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

TASKS_SUBMITTED = Counter(
    "tasklane_tasks_submitted_total",
    "Tasks accepted by TaskManager.submit, by the executor routing chose.",
    ["task", "executor"],
)

TASKS_FINISHED = Counter(
    "tasklane_tasks_finished_total",
    "Tasks that reached a final status (SUCCESS, FAILURE or CANCELLED), by the executor of "
    "their record.",
    ["task", "executor", "status"],
)

TASK_RETRIES = Counter(
    "tasklane_task_retries_total",
    "Failed attempts that will be retried.",
    ["task"],
)

TASK_DURATION = Histogram(
    "tasklane_task_duration_seconds",
    "Run time of one attempt, from STARTED to its outcome.",
    ["task", "executor"],
    buckets=DURATION_BUCKETS,
)

TASK_QUEUE_WAIT = Histogram(
    "tasklane_task_queue_wait_seconds",
    "From submit to the first start of a task (countdown included).",
    ["task", "executor"],
    buckets=QUEUE_WAIT_BUCKETS,
)

SUBMIT_DURATION = Histogram(
    "tasklane_submit_duration_seconds",
    "Time spent inside TaskManager.submit for one task, by the executor chosen.",
    ["executor"],
    buckets=SUBMIT_BUCKETS,
)

TASKS_IN_PROGRESS = Gauge(
    "tasklane_tasks_in_progress",
    "Attempts running now (STARTED), by executor.",
    ["executor"],
    multiprocess_mode="livesum",
)

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered by the api, by route template and status code.",
    ["method", "handler", "status"],
)

HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency until the response is complete, by route template.",
    ["method", "handler"],
    buckets=HTTP_BUCKETS,
)

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

RECOVERED = Counter(
    "tasklane_recovered_total",
    "Unacknowledged messages of a dead worker put back on their queues, by reason: "
    "worker_dead (declared dead by the liveness rule), worker_restarted (a new process under "
    "the same hostname found its previous incarnation's).",
    ["reason"],
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

RATE_LIMITED = Counter(
    "tasklane_rate_limited_total",
    "Starts deferred by the task's global rate limit (one per refusal; the task waits for "
    "its slot without holding a worker or runner slot).",
    ["task"],
)

RATE_DELAYED = Gauge(
    "tasklane_rate_delayed",
    "Tasks waiting for their rate-limit slot now, read from the limiter at scrape time (the "
    "same Redis for every api process, hence the most recent reading).",
    ["task"],
    multiprocess_mode="livemostrecent",
)

_broker_up: Gauge | None = None
_broker_up_lock = threading.Lock()


def set_broker_up(up: bool) -> None:
    """Record the WorkerMonitor's last broker read (1 reachable, 0 not).

    `tasklane_broker_up` has no labels, so prometheus_client would export it at 0 from every
    process that imports this module the moment it is defined: a worker pod or a single-mode
    api, which never read the broker, would then report "broker down". It is created on the
    first reading instead, so only processes that run a monitor export it.
    """
    global _broker_up
    with _broker_up_lock:
        if _broker_up is None:
            _broker_up = Gauge(
                "tasklane_broker_up",
                "1 when the last read of the broker's Redis succeeded, else 0.",
                multiprocess_mode="livemostrecent",
            )
    _broker_up.set(1 if up else 0)


def count_fallback(task: str, reason: FallbackReason) -> None:
    """One task ran somewhere other than the first choice, for `reason`."""
    EXECUTOR_FALLBACKS.labels(task=task, reason=reason).inc()


def count_routing(task: str, executor: str) -> None:
    """One hybrid routing decision."""
    ROUTING_DECISIONS.labels(task=task, executor=executor).inc()


def count_recovered(reason: RecoveryReason, messages: int) -> None:
    """`messages` messages of a dead worker went back to their queues, for `reason`."""
    RECOVERED.labels(reason=reason).inc(messages)
