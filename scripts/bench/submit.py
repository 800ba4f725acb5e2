"""Benchmarks (a) and (b): the cost of handing tasks to Celery, tasklane vs raw Celery.

(a) TaskManager.submit with the celery executor and the redis store, one call after another,
    vs `celery_app.send_task` in a loop: same app object, same broker, same queue.
(b) TaskManager.submit_many(calls) vs a `.delay()` loop over a plain Celery task (no tasklane
    record, Celery's own Task class): the batch API against what callers write today.

No worker consumes while these run: only the caller's side is measured. The queue list is
emptied between rounds so every round pushes onto the same short list.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import redis
from celery import Celery

from app.config import Settings
from app.core.tasks.manager import TaskCall, TaskManager
from app.wiring import build_task_manager
from scripts.bench.common import Profile, Result, Target, alternate, compare, log, redis_server
from scripts.bench.tasks import LIGHT_QUEUE

TASK_MODULES = ["scripts.bench.tasks"]
WARMUP = 20


def scaled_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings of an api publishing to `redis_url` (records in the same Redis)."""
    values: dict[str, object] = {
        "executor": "celery",
        "store": "redis",
        "redis_url": redis_url,
        "celery_broker_url": redis_url,
        "task_modules": TASK_MODULES,
        "scheduler": "off",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def celery_app_of(manager: TaskManager) -> Celery:
    """The Celery app the manager's CeleryExecutor publishes with (the baseline uses it too:
    same configuration, same connection pool, same broker)."""
    return manager.executor.celery_app  # type: ignore[attr-defined]


async def run(profile: Profile, parts: Collection[str] = ("a", "b")) -> list[Result]:
    """The submit benchmarks `parts` names ("a", "b") against a redis-server of their own."""
    with redis_server() as server:
        manager = build_task_manager(scaled_settings(server.url))
        await manager.start()
        try:
            results = []
            if "a" in parts:
                results.append(await _single_submit(profile, manager, server.url))
            if "b" in parts:
                results.append(await _submit_many(profile, manager, server.url))
            return results
        finally:
            await manager.stop(grace=0)


def _drain(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(LIGHT_QUEUE)
    finally:
        client.close()


async def _single_submit(profile: Profile, manager: TaskManager, redis_url: str) -> Result:
    app, n = celery_app_of(manager), profile.submits

    async def baseline() -> float:
        began = time.perf_counter()
        for i in range(n):
            app.send_task("bench_noop", args=[i], queue=LIGHT_QUEUE)
        rate = n / (time.perf_counter() - began)
        _drain(redis_url)
        return rate

    async def tasklane() -> float:
        began = time.perf_counter()
        for i in range(n):
            await manager.submit("bench_noop", i)
        rate = n / (time.perf_counter() - began)
        _drain(redis_url)
        return rate

    for i in range(WARMUP):  # connections, producer pool, first-call imports
        app.send_task("bench_noop", args=[i], queue=LIGHT_QUEUE)
        await manager.submit("bench_noop", i)
    _drain(redis_url)
    log(f"(a) submit: {profile.rounds} round(s) of {n} submits each side")
    base, ours = await alternate(profile.rounds, baseline, tasklane)
    return compare(
        key="a_celery_submit",
        name="(a) submit, celery executor",
        unit="submits/s",
        baseline=base,
        tasklane=ours,
        target=Target("min", 1.0),
        target_text=">= 1.0x",
        ratio_means=(
            "tasklane submits/s / raw send_task/s, sequential calls; higher is better. "
            "tasklane also validates the arguments and writes the task record; when the broker "
            "is the store's Redis, record and Celery message go in one Lua call, else the "
            "message is published by a long-lived publisher thread bounded by publish_timeout"
        ),
        when_missed=(
            "check which path describe()['publish'] reports: the send_task fallback (broker "
            "not the store's Redis, publish signals, compression, priorities) costs a record "
            "round trip plus a publisher-thread hand-off per submit"
        ),
    )


async def _submit_many(profile: Profile, manager: TaskManager, redis_url: str) -> Result:
    app, n = celery_app_of(manager), profile.submits
    raw_task = app.tasks["bench_raw_noop"]  # the plain Celery twin, bound to this app

    async def baseline() -> float:
        began = time.perf_counter()
        for i in range(n):
            raw_task.delay(i)
        rate = n / (time.perf_counter() - began)
        _drain(redis_url)
        return rate

    async def tasklane() -> float:
        began = time.perf_counter()
        ids = await manager.submit_many(TaskCall("bench_noop", (i,)) for i in range(n))
        rate = n / (time.perf_counter() - began)
        assert len(ids) == n
        _drain(redis_url)
        return rate

    for i in range(WARMUP):
        raw_task.delay(i)
    await manager.submit_many(TaskCall("bench_noop", (i,)) for i in range(WARMUP))
    _drain(redis_url)
    log(f"(b) submit_many: {profile.rounds} round(s) of {n} tasks each side")
    base, ours = await alternate(profile.rounds, baseline, tasklane)
    return compare(
        key="b_submit_many",
        name="(b) submit_many vs .delay() loop",
        unit="tasks/s",
        baseline=base,
        tasklane=ours,
        target=Target("min", 5.0),
        target_text=">= 5.0x",
        ratio_means=(
            f"tasklane submit_many({n}) tasks/s / raw Celery .delay() loop tasks/s; higher is "
            "better"
        ),
        when_missed=(
            "the remaining cost per task is argument checks, the record model, Celery's own "
            "as_task_v2 + JSON and the Redis script; on the send_task fallback path (see (a)) "
            "messages go through one producer in kombu's Producer.batch(), about 2.4x raw"
        ),
    )
