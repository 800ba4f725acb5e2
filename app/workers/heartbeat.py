"""Worker heartbeat: a bootstep in the worker's main process that announces it in Redis.

Every TASKLANE_WORKER_HEARTBEAT_INTERVAL seconds a daemon thread writes `workers` and
`worker:{hostname}` (queues, concurrency, pid, version) and purges workers that stopped beating
(app.workers.presence). The api's WorkerMonitor reads those keys to decide whether a queue can
be served, and never has to ping a worker. Redis being away only logs a warning: the worker
keeps running its tasks and the heartbeat resumes by itself when Redis answers again.

Started before the consumer (so the worker is announced before it takes a task), stopped after
it (a warm shutdown keeps beating while running tasks finish), then its entries are removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from importlib import metadata
from typing import TYPE_CHECKING

import redis
from celery import bootsteps

from app.core.tasks.worker_keys import WorkerKeys, heartbeat_client_name
from app.workers import presence
from app.workers.presence import WorkerInfo

if TYPE_CHECKING:
    from celery.worker import WorkController

log = logging.getLogger("tasklane.worker.heartbeat")

_REDIS_DOWN = (redis.RedisError, OSError)


def _version() -> str:
    try:
        return metadata.version("tasklane")
    except metadata.PackageNotFoundError:
        return "unknown"


class HeartbeatThread:
    """Beats on a daemon thread with its own sync client; start() beats once first."""

    def __init__(self, url: str, keys: WorkerKeys, info: WorkerInfo, interval: float) -> None:
        self.keys = keys
        self.info = info
        self.interval = interval
        # Short socket timeouts: a beat must not hang much longer than its own interval.
        timeout = max(1.0, min(5.0, interval))
        self.client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            # Named, so the api's monitor sees this connection close when the worker dies.
            client_name=heartbeat_client_name(info.hostname),
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        try:
            # A previous incarnation under this hostname (a restarted container) may have left
            # active entries; nothing runs here yet, so every entry is stale.
            stale = presence.clear_active(self.client, self.keys, self.info.hostname)
            if stale:
                log.warning(
                    "cleared %d active entries a previous %s left", stale, self.info.hostname
                )
        except _REDIS_DOWN as exc:
            log.warning("could not clear stale active entries: %s", exc)
        self.beat()
        self._thread = threading.Thread(target=self._run, name="tasklane-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """Write one heartbeat and purge dead workers; never raises."""
        try:
            presence.write_heartbeat(self.client, self.keys, self.info, self.interval)
            purged = presence.purge_dead(self.client, self.keys, self.interval)
        except _REDIS_DOWN as exc:
            if not self._failing:
                log.warning(
                    "worker heartbeat failed, retrying every %g s: %s",
                    self.interval,
                    exc,
                    extra={"worker": self.info.hostname},
                )
            self._failing = True
            return
        except Exception:
            log.exception("worker heartbeat failed unexpectedly")
            return
        if self._failing:
            log.info("worker heartbeat resumed", extra={"worker": self.info.hostname})
            self._failing = False
        for hostname in purged:
            log.warning("purged dead worker %s and its active entries", hostname)

    def stop(self) -> None:
        """Stop beating and remove this worker's entries at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 6)
        try:
            presence.forget_worker(self.client, self.keys, self.info.hostname)
        except _REDIS_DOWN as exc:
            log.warning("could not remove the worker's heartbeat: %s", exc)
        self.client.close()

    terminate = stop


class Heartbeat(bootsteps.StartStopStep):
    """Worker bootstep running a HeartbeatThread for the worker's lifetime."""

    label = "tasklane heartbeat"
    requires = ("celery.worker.components:Pool",)

    def create(self, worker: WorkController) -> HeartbeatThread:
        settings = worker.app.tasklane_settings
        url = settings.store_redis_url
        if url is None:
            raise SystemExit(
                "tasklane worker: heartbeats need Redis: set REDIS_URL (or a redis:// "
                "CELERY_BROKER_URL)"
            )
        info = WorkerInfo(
            hostname=worker.hostname,
            queues=tuple(worker.app.amqp.queues.consume_from),
            concurrency=int(worker.concurrency),
            pid=os.getpid(),
            version=_version(),
            started=time.time(),
        )
        return HeartbeatThread(
            url, WorkerKeys(settings.key_prefix), info, settings.worker_heartbeat_interval
        )
