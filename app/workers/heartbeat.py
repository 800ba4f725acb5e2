"""Worker heartbeat: a bootstep in the worker's main process that announces it in Redis.

Every TASKLANE_WORKER_HEARTBEAT_INTERVAL seconds a daemon thread writes `workers` and
`worker:{hostname}` (queues, concurrency, pid, version) and purges workers that stopped beating
(the writes and keys are app/core/tasks/presence.py; this module runs them in a worker). The
api's WorkerMonitor reads those keys to decide whether a queue can be served, and never has to
ping a worker. Redis being away only logs a warning: the worker keeps running its tasks and
the heartbeat resumes by itself when Redis answers again.

Started before the consumer (so the worker is announced before it takes a task). Celery stops
this step before the pool drains (it requires the pool, so it stops first): a warm stop only
*drains* — the worker advertises no queue any more (routing counts it out at once) but keeps
beating while its running tasks finish, since those hold unacknowledged messages and a worker
that stops beating is dead to recovery, which would hand them to another worker mid-run. Its
entries are removed on Celery's worker_shutdown signal, sent once the pool has finished. A cold
terminate removes them at once (its tasks are killed; kombu restores their messages).

Recovery (app/core/tasks/recovery.py), when the broker is the store's Redis: the bootstep
selects app.workers.transport for the consumer (it records which worker holds each
unacknowledged message); at start the thread puts back what a previous incarnation under this
hostname still held; a beat that purged a dead worker restores its messages (so recovery
happens with no hybrid api running), as does every SWEEP_EVERY-th beat (a sweep that failed, a
worker purged by an older version); each beat also reads this worker's own fence: a worker
declared dead while it was only cut off from Redis says so in its log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from importlib import metadata
from typing import TYPE_CHECKING

import redis
from celery import bootsteps, signals

from app.core.tasks import presence
from app.core.tasks.presence import LivenessRule, WorkerInfo, WorkerKeys
from app.core.tasks.recovery import Recovery, recovery_layout
from app.workers.broker import TRANSPORT_PATH as GUARDED_TRANSPORT
from app.workers.transport import HOLDER_OPTION, HOLDERS_KEY_OPTION, TRANSPORT_PATH

if TYPE_CHECKING:
    from celery.worker import WorkController

log = logging.getLogger("tasklane.worker.heartbeat")

_REDIS_DOWN = (redis.RedisError, OSError)
#: Beats between two unconditional recovery sweeps (each reads the whole holders hash, which
#: every worker of a large pool doing every beat would make a steady load on Redis).
SWEEP_EVERY = 12


def _version() -> str:
    try:
        return metadata.version("tasklane")
    except metadata.PackageNotFoundError:
        return "unknown"


class HeartbeatThread:
    """Beats on a daemon thread with its own sync client; start() beats once first."""

    def __init__(
        self,
        url: str,
        keys: WorkerKeys,
        info: WorkerInfo,
        interval: float,
        recovery: Recovery | None = None,
    ) -> None:
        self.keys = keys
        self.info = info
        self.interval = interval
        #: Restores dead workers' messages (None: the broker is elsewhere, see recovery.py).
        self.recovery = recovery
        self.client = presence.heartbeat_connection(url, info.hostname, interval)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._beats = 0

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
        if self.recovery is not None:
            try:
                # Before the consumer starts: whatever is held under this name is not ours.
                self.recovery.restore_own(self.client, self.info.hostname, time.time())
            except _REDIS_DOWN as exc:
                log.warning("could not restore a previous incarnation's messages: %s", exc)
        self.beat()
        self._thread = threading.Thread(target=self._run, name="tasklane-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """Write one heartbeat and purge dead workers; never raises."""
        try:
            evicted = presence.write_heartbeat(self.client, self.keys, self.info, self.interval)
            purged = presence.purge_dead(self.client, self.keys, self.interval)
            self._beats += 1
            if self.recovery is not None and (purged or self._beats % SWEEP_EVERY == 0):
                self.recovery.sweep(self.client, time.time())
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
        if evicted is not None:
            log.error(
                "this worker was declared dead at %s (cut off from Redis too long): its "
                "unacknowledged messages went to other workers; tasks they took over refuse "
                "this worker's late outcomes",
                evicted,
                extra={"worker": self.info.hostname},
            )

    def stop(self) -> None:
        """Warm shutdown: drain now, and leave once Celery says the worker has shut down (its
        worker_shutdown signal comes after the pool finished the running tasks)."""
        self.info = dataclasses.replace(self.info, queues=())
        self.beat()  # routing stops counting this worker now, not a beat later
        signals.worker_shutdown.connect(self._leave_on_shutdown, weak=False)

    def _leave_on_shutdown(self, **_: object) -> None:
        signals.worker_shutdown.disconnect(self._leave_on_shutdown)
        self.close()

    def close(self) -> None:
        """Stop beating and remove this worker's entries at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 6)
        try:
            presence.forget_worker(self.client, self.keys, self.info.hostname)
        except _REDIS_DOWN as exc:
            log.warning("could not remove the worker's heartbeat: %s", exc)
        self.client.close()

    terminate = close


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
        keys = WorkerKeys(settings.key_prefix)
        interval = settings.worker_heartbeat_interval
        return HeartbeatThread(
            url, keys, info, interval, recovery=_recovery(worker, keys, interval)
        )


def _recovery(worker: WorkController, keys: WorkerKeys, interval: float) -> Recovery | None:
    """Select the holder-recording transport for this worker's consumer (its connection is
    made after this bootstep is created) and build its Recovery; None when recovery cannot
    run here (recovery.recovery_problem) or a transport other than ours was configured (the
    holder-recording one extends the restart-guarded default, app.workers.broker)."""
    conf = worker.app.conf
    options = dict(conf.broker_transport_options or {})
    layout = recovery_layout(conf.broker_url, worker.app.tasklane_settings.store_redis_url, options)
    if layout is None or conf.broker_transport not in (None, GUARDED_TRANSPORT, TRANSPORT_PATH):
        return None
    conf.broker_transport = TRANSPORT_PATH
    conf.broker_transport_options = {
        **options,
        HOLDER_OPTION: worker.hostname,
        HOLDERS_KEY_OPTION: keys.unacked_holders,
    }
    # The monitor's rule; with no CLIENT LIST read here, the heartbeat window decides.
    return Recovery(keys, LivenessRule.for_interval(interval), layout)
