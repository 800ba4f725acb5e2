"""Redis key names shared by Celery workers (writers) and the api's WorkerMonitor (reader).

DESIGN.md §3-4: every worker writes a heartbeat every `worker_heartbeat_interval` seconds to
  {prefix}workers               ZSET  member = worker hostname, score = unix time
  {prefix}worker:{hostname}     HASH  queues (comma-separated), concurrency, pid, version;
                                      TTL = 6 heartbeat intervals
and keeps the tasks it is running in
  {prefix}active:{queue}        ZSET  task id -> started_at (KEDA's "active" trigger)
  {prefix}worker:{hostname}:active  HASH task id -> queue (so a dead worker's entries can be
                                      removed from active:{queue} by whoever notices it died)
and, in the broker's Redis (the same server: recovery needs both in one script), which worker
holds each message it received and has not acknowledged yet (app/core/tasks/recovery.py):
  {prefix}unacked:holders       HASH  kombu delivery tag -> worker hostname
  {prefix}worker:{hostname}:evicted  STRING when recovery declared it dead (its fence)
A worker is live while its score is younger than LIVENESS_FACTOR heartbeat intervals.

The heartbeat's Redis connection is named heartbeat_client_name(hostname) (CLIENT SETNAME), so
the monitor can also see, in CLIENT LIST, that a worker's connection closed: a SIGKILLed
worker's kernel closes its sockets at once, long before its heartbeat goes stale.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A worker missing this many heartbeats in a row is dead (3 x 5 s = 15 s, DESIGN.md §3).
LIVENESS_FACTOR = 3


@dataclass(frozen=True, slots=True)
class WorkerKeys:
    prefix: str = "tasklane:"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    def worker(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}"

    def worker_active(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}:active"

    def active(self, queue: str) -> str:
        return f"{self.prefix}active:{queue}"

    @property
    def unacked_holders(self) -> str:
        return f"{self.prefix}unacked:holders"

    def worker_evicted(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}:evicted"


def heartbeat_client_name(hostname: str) -> str:
    """The CLIENT SETNAME of a worker's heartbeat connection (no spaces: Redis refuses them)."""
    return "tasklane-heartbeat:" + hostname.replace(" ", "_")


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue: the base list and its priority sub-lists
    (kombu names them `queue\\x06\\x16{priority}`; with the default priority steps 0,3,6,9 the
    base list holds priority 0)."""
    return [queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))]
