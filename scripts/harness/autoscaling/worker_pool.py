"""The worker Deployment, locally: each pod is a real Celery worker process (scripts/harness/
celery_processes.CeleryWorker, prefork, the rendered --queues and --concurrency), created and
deleted the way the ReplicaSet controller and the kubelet would.

Scale-up creates pods at once, each starting in a thread of its own (pods start in parallel);
a pod is *ready* when its heartbeat is in Redis, which is what the chart's startup probe
(`tasklane status --worker`) waits for. Scale-down picks victims with replicaset.py
and stops each like the kubelet: SIGTERM to the main process (Celery's warm shutdown: stop
consuming, finish running tasks), SIGKILL to the whole pod once terminationGracePeriodSeconds
have passed. A killed worker's unacknowledged task comes back through acks_late +
reject_on_worker_lost and the broker's visibility timeout (DESIGN.md §3).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from app.core.tasks.presence import WorkerKeys
from scripts.harness.autoscaling.replicaset import PodView, deletion_order
from scripts.harness.celery_processes import CeleryWorker, unique_hostname


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRecord:
    """What happened to one pod, for the run's report; times on the scenario clock."""

    name: str
    created: float
    ready_since: float | None
    #: When the kubelet sent SIGTERM (None: never stopped by a scale-down).
    sigterm_at: float | None
    #: Task ids the worker listed as running (worker:{host}:active) at SIGTERM.
    busy_at_sigterm: tuple[str, ...]
    exited_at: float | None
    exit_code: int | None
    #: True when the grace period ran out and the pod was SIGKILLed.
    killed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PodRecord:
        return cls(**{**data, "busy_at_sigterm": tuple(data["busy_at_sigterm"])})


@dataclass
class _Pod:
    """Mutable state of one pod, written by its start/stop threads."""

    name: str
    created: float
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    ready_since: float | None = None
    worker: CeleryWorker | None = None
    error: BaseException | None = None
    deleting: bool = False
    sigterm_at: float | None = None
    busy_at_sigterm: tuple[str, ...] = ()
    exited_at: float | None = None
    exit_code: int | None = None
    killed: bool = False
    threads: list[threading.Thread] = field(default_factory=list)

    def view(self) -> PodView:
        return PodView(
            name=self.name, uid=self.uid, created=self.created, ready_since=self.ready_since
        )

    def record(self) -> PodRecord:
        return PodRecord(
            name=self.name,
            created=self.created,
            ready_since=self.ready_since,
            sigterm_at=self.sigterm_at,
            busy_at_sigterm=self.busy_at_sigterm,
            exited_at=self.exited_at,
            exit_code=self.exit_code,
            killed=self.killed,
        )


class WorkerDeployment:
    """Real worker processes following a replica count set by scale()."""

    def __init__(
        self,
        redis_url: str,
        logs: Path,
        *,
        name: str,
        queues: Sequence[str],
        concurrency: int,
        grace: float,
        clock: Callable[[], float],
        heartbeat_interval: float,
        key_prefix: str = "tasklane:",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.logs = logs
        self.name = name
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.grace = grace
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.keys = WorkerKeys(key_prefix)
        self.env = dict(env or {})
        self._client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
        self._pods: list[_Pod] = []
        self._lock = threading.Lock()
        logs.mkdir(parents=True, exist_ok=True)

    # -- observed state ------------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        """Pods not being deleted: the Deployment's status.replicas."""
        with self._lock:
            return sum(not pod.deleting for pod in self._pods)

    @property
    def ready(self) -> int:
        """Pods not being deleted whose worker is up (heartbeat seen)."""
        with self._lock:
            return sum(not pod.deleting and pod.ready_since is not None for pod in self._pods)

    def running(self) -> int:
        """Tasks the workers say they are running (each worker's own worker:{host}:active,
        terminating ones included): ground truth that does not depend on the chart's triggers."""
        with self._lock:
            names = [pod.name for pod in self._pods if pod.exited_at is None]
        with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hlen(self.keys.worker_active(name))
            return sum(pipe.execute())

    def settled(self) -> bool:
        """No pod is starting or shutting down."""
        with self._lock:
            return all(not t.is_alive() for pod in self._pods for t in pod.threads)

    def check(self) -> None:
        """Raise the first start failure (a worker that never came up is a broken test run)."""
        with self._lock:
            for pod in self._pods:
                if pod.error is not None:
                    raise RuntimeError(f"worker pod {pod.name} failed to start") from pod.error

    def records(self) -> list[PodRecord]:
        with self._lock:
            return [pod.record() for pod in self._pods]

    # -- the ReplicaSet controller -------------------------------------------------------------

    def scale(self, replicas: int) -> None:
        """Create or delete pods until `replicas` are not being deleted."""
        with self._lock:
            now = self.clock()
            current = [pod for pod in self._pods if not pod.deleting]
            for _ in range(replicas - len(current)):
                pod = _Pod(name=unique_hostname(self.name), created=now)
                self._pods.append(pod)
                self._spawn(pod, self._start)
            if replicas < len(current):
                views = {pod.uid: pod for pod in current}
                victims = deletion_order([pod.view() for pod in current], now)
                for view in victims[: len(current) - replicas]:
                    pod = views[view.uid]
                    pod.deleting = True
                    self._spawn(pod, self._terminate)

    def _spawn(self, pod: _Pod, target: Callable[[_Pod], None]) -> None:
        thread = threading.Thread(target=target, args=(pod,), name=f"{target.__name__}-{pod.name}")
        pod.threads.append(thread)
        thread.start()

    # -- the kubelet ---------------------------------------------------------------------------

    def _start(self, pod: _Pod) -> None:
        try:
            pod.worker = CeleryWorker(
                self.redis_url,
                log_path=self.logs / f"{pod.name.partition('@')[0]}.log",
                queues=self.queues,
                concurrency=self.concurrency,
                hostname=pod.name,
                heartbeat_interval=self.heartbeat_interval,
                key_prefix=self.keys.prefix,
                env=self.env,
            )
        except Exception as exc:  # reported by check() on the main thread
            pod.error = exc
            return
        pod.ready_since = self.clock()

    def _terminate(self, pod: _Pod) -> None:
        # A pod deleted while its container starts is stopped once it runs (its process exists
        # only after CeleryWorker returns); the ranking deletes such pods first anyway.
        for thread in pod.threads[:-1]:
            thread.join()
        worker = pod.worker
        if worker is None:
            pod.exited_at = self.clock()
            return
        try:
            busy = self._client.hkeys(self.keys.worker_active(pod.name))
        except (redis.RedisError, OSError):
            busy = []
        pod.busy_at_sigterm = tuple(sorted(busy))
        pod.sigterm_at = self.clock()
        if worker.alive():
            worker.process.send_signal(signal.SIGTERM)
        try:
            pod.exit_code = worker.process.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            pod.killed = True
            worker.kill()
            pod.exit_code = worker.process.returncode
        worker.stop()  # reap what is left of its session (prefork children)
        pod.exited_at = self.clock()

    # -- cleanup -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every pod still running (end of run or a failed run) and wait for the threads."""
        with self._lock:
            pods = list(self._pods)
        for pod in pods:
            pod.threads[0].join()  # a starting worker comes up or fails within its own timeout
        for pod in pods:
            if pod.worker is not None:
                pod.worker.stop()  # no-op for a pod that already exited
        for pod in pods:
            for thread in pod.threads:
                thread.join()
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
