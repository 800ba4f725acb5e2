"""Is this pod's Celery worker alive? The question the worker's liveness probe asks.

`tasklane status --worker` answers from the heartbeat the worker itself writes (DESIGN.md §6),
not from `celery inspect ping`, which goes through the broker and a reply queue and fails
under load. The heartbeat thread runs inside the worker's main process, so a hung or crashed
main process stops it: a beat the liveness rule (app/core/tasks/presence.py) declares dead
means restart.

An unreachable Redis is not judged: no worker can beat then, and restarting every worker pod
during a Redis outage would only add churn (their tasks are acknowledged late, so restarts
would also redeliver work). The probe reports and passes; the alerts cover the outage.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import redis

from app.config import Settings
from app.core.tasks.presence import LivenessRule, WorkerKeys, last_beat


@dataclass(frozen=True, slots=True)
class Verdict:
    alive: bool
    message: str


def default_nodename() -> str:
    """Celery's default node name for a worker on this host (`celery@%h`)."""
    return f"celery@{socket.gethostname()}"


def check_worker(settings: Settings, nodename: str | None = None) -> Verdict:
    """Judge the worker `nodename` (default: this host's) by its last heartbeat."""
    nodename = nodename or default_nodename()
    url = settings.store_redis_url
    if url is None:
        return Verdict(False, "no Redis configured (REDIS_URL): a worker cannot beat without it")
    keys = WorkerKeys(settings.key_prefix)
    client = redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=3, socket_timeout=3
    )
    try:
        score = last_beat(client, keys, nodename)
    except redis.RedisError as exc:
        return Verdict(True, f"cannot read heartbeats ({exc}); not judging {nodename}")
    finally:
        client.close()
    if score is None:
        return Verdict(False, f"no heartbeat from {nodename} in {keys.workers}")
    now = time.time()
    age = now - score
    rule = LivenessRule.for_interval(settings.worker_heartbeat_interval)
    if not rule.is_live(score, now):
        limit = f"limit {rule.liveness:.0f}s"
        return Verdict(False, f"{nodename}: last heartbeat {age:.1f}s ago ({limit})")
    return Verdict(True, f"{nodename}: last heartbeat {age:.1f}s ago")
