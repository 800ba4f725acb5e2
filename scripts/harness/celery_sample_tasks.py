"""Throwaway tasks for tests that start real Celery workers (scripts.harness.celery_processes).

They keep their evidence in the worker's own Redis (REDIS_URL), under keys the test names, so a
test can count how often a body ran and how often its side effect was applied.
"""

from __future__ import annotations

import os
import signal
import time

import redis

from app.config import Settings
from app.core.tasks import TaskContext, task


def _redis() -> redis.Redis:
    url = Settings().store_redis_url
    if url is None:
        raise RuntimeError("celery sample tasks need REDIS_URL")
    return redis.Redis.from_url(url, decode_responses=True)


@task("celery_effect_once", weight="heavy", idempotent=True, takes_context=True)
def celery_effect_once(ctx: TaskContext, key: str, seconds: float) -> int:
    """Counts the run in `{key}:runs:{task id}`, sleeps, then applies its side effect (INCR
    `{key}:effects`) exactly once per task id: a re-run after a crash finds the guard set."""
    client = _redis()
    client.incr(f"{key}:runs:{ctx.task_id}")
    time.sleep(seconds)
    if client.set(f"{key}:done:{ctx.task_id}", "1", nx=True):
        client.incr(f"{key}:effects")
    return int(client.get(f"{key}:effects") or 0)


@task("celery_effect_unsafe", weight="heavy", takes_context=True)
def celery_effect_unsafe(ctx: TaskContext, key: str, seconds: float) -> int:
    """Like celery_effect_once without the guard, and not idempotent: must never run twice."""
    client = _redis()
    client.incr(f"{key}:runs:{ctx.task_id}")
    time.sleep(seconds)
    return int(client.incr(f"{key}:effects"))


@task("celery_logged_run", weight="heavy", takes_context=True)
def celery_logged_run(ctx: TaskContext, path: str, seconds: float) -> str:
    """Appends its task id to the file at `path` (one line per run: evidence that outlives the
    Redis the worker uses), then sleeps. Not idempotent: must never run twice."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{ctx.task_id}\n".encode())  # one write: lines of two processes never mix
    finally:
        os.close(fd)
    time.sleep(seconds)
    return "ran"


@task("celery_flaky", retries=2, backoff=0.1, backoff_max=0.2, takes_context=True)
def celery_flaky(ctx: TaskContext, succeed_on: int) -> int:
    """Fails every attempt before `succeed_on` (1-based); succeed_on=0 never succeeds."""
    if succeed_on == 0 or ctx.attempt < succeed_on:
        raise ValueError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt


@task("celery_die_once", weight="heavy", idempotent=True)
def celery_die_once(key: str) -> str:
    """SIGKILLs its own pool process the first time (a lost child), succeeds the next time."""
    if _redis().set(f"{key}:died", "1", nx=True):
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@task("celery_add")
def celery_add(a: int, b: int) -> int:
    return a + b


@task("celery_sleep_terminable", weight="heavy", terminate_safe=True)
def celery_sleep_terminable(seconds: float) -> str:
    """Sleeps without ever checking ctx.cancelled(): only revoke(terminate) can stop it."""
    time.sleep(seconds)
    return "slept"


@task("celery_secret", sensitive=True)
def celery_secret(password: str, *, pin: str = "") -> str:
    """sensitive=True on a worker: Celery's own log lines must not show its values."""
    return f"derived-{password}-{pin}"


@task("celery_rate_limited", rate_limit="10/s")
def celery_rate_limited(i: int) -> int:
    """Limited to 10 starts per second across every process (scripts/harness/rate_limit_run.py)."""
    return i
