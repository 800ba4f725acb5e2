"""Benchmark (e): how fast the hybrid executor notices a Celery pool appear and disappear.

The hybrid executor is the real one (build_task_manager with TASKLANE_EXECUTOR=hybrid: runner,
CeleryExecutor, WorkerMonitor polling Redis every monitor_interval), the worker a real
`celery worker` beating every heartbeat interval. Each cycle:

- new worker: start it; latency = when route_preview(bench_heavy) first says "celery" minus the
  worker's first heartbeat (its score in the `workers` ZSET, the worker's own clock, same host).
  Measured from the first heartbeat rather than from the spawn: Python and Celery boot time is
  not the monitor's to win back.
- dead pool: SIGKILL the worker and its pool children (a pod dying; the pool is this one
  worker, concurrency 1); latency = when the route first says "background" (heavy tasks run
  locally) minus the kill. The kill lands at a different point of the heartbeat cycle in each
  cycle, since how long ago the last beat was decides the answer.

There is no baseline: plain Celery has no routing decision to compare with, so the ratio is
measured / target (<= 1.0 meets it). The targets are stated for the defaults (heartbeat 5 s,
monitor interval 2 s): dead pool <= 2 heartbeats, new worker <= 1 monitor interval; --quick
runs at 1 s / 0.4 s and scales the targets the same way.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import redis.asyncio as aioredis

from app.core.tasks.manager import TaskManager
from app.core.tasks.presence import LIVENESS_FACTOR
from app.wiring import build_task_manager
from scripts.bench.common import Profile, Result, Target, Workspace, log, redis_server
from scripts.bench.submit import TASK_MODULES, scaled_settings
from scripts.harness.celery_processes import CeleryWorker, unique_hostname

POLL = 0.01
HEAVY = "bench_heavy"


def _route(manager: TaskManager) -> str:
    executor = manager.executor
    return executor.route_preview(manager.registry.get(HEAVY)).executor


async def _wait_route(manager: TaskManager, expected: str, limit: float) -> float:
    """time.time() when the hybrid first routes the heavy task to `expected`."""
    deadline = time.monotonic() + limit
    while _route(manager) != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{HEAVY} not routed to {expected} within {limit} s")
        await asyncio.sleep(POLL)
    return time.time()


async def _first_beat(client: aioredis.Redis, hostname: str, limit: float) -> float:
    """The score of the worker's first heartbeat, read within POLL of it being written."""
    deadline = time.monotonic() + limit
    while True:
        score = await client.zscore("tasklane:workers", hostname)
        if score is not None:
            return float(score)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no heartbeat from {hostname} within {limit} s")
        await asyncio.sleep(POLL)


async def run(profile: Profile, workspace: Workspace) -> list[Result]:
    hb, interval = profile.heartbeat, profile.monitor_interval
    new_latencies: list[float] = []
    dead_latencies: list[float] = []
    with redis_server() as server:
        settings = scaled_settings(
            server.url,
            executor="hybrid",
            worker_heartbeat_interval=hb,
            monitor_interval=interval,
        )
        manager = build_task_manager(settings)
        await manager.start()
        client = aioredis.Redis.from_url(server.url)
        try:
            if _route(manager) != "background":
                raise RuntimeError(f"{HEAVY} routed to {_route(manager)} with no worker running")
            for cycle in range(profile.detection_rounds):
                log(f"(e) cycle {cycle + 1}/{profile.detection_rounds}: starting a worker")
                new, dead = await _cycle(profile, workspace, server.url, client, manager, cycle)
                log(f"(e) new worker seen after {new:.2f} s, dead pool after {dead:.2f} s")
                new_latencies.append(new)
                dead_latencies.append(dead)
        finally:
            await client.aclose()
            await manager.stop(grace=0)
    settings_text = f"heartbeat {hb:g} s, monitor interval {interval:g} s"
    dead_target, new_target = 2 * hb, interval
    return [
        _latency_result(
            key="e_dead_pool_detection",
            name="(e) dead-pool detection",
            samples=dead_latencies,
            target=dead_target,
            means=(
                f"seconds from SIGKILL of every worker to heavy tasks routed in-process, / the "
                f"{dead_target:g} s target ({settings_text}); <= 1 meets it"
            ),
            when_missed=(
                f"a worker counts as live for LIVENESS_FACTOR={LIVENESS_FACTOR} heartbeats "
                f"({LIVENESS_FACTOR * hb:g} s) after its last one, so a kill is noticed "
                f"{(LIVENESS_FACTOR - 1) * hb:g}-{LIVENESS_FACTOR * hb:g} s later whatever the "
                "monitor interval. Needed: a liveness of 2 heartbeats, or noticing that the "
                "worker's Redis connection closed (CLIENT LIST, named heartbeat connection): "
                "a killed process's sockets close at once, so <= 1 monitor interval"
            ),
        ),
        _latency_result(
            key="e_new_worker_detection",
            name="(e) new-worker detection",
            samples=new_latencies,
            target=new_target,
            means=(
                f"seconds from a new worker's first heartbeat to heavy tasks routed to Celery, "
                f"/ the {new_target:g} s target ({settings_text}); <= 1 meets it"
            ),
            when_missed="the monitor reads heartbeats once per interval: a slow refresh",
        ),
    ]


async def _cycle(
    profile: Profile,
    workspace: Workspace,
    redis_url: str,
    client: aioredis.Redis,
    manager: TaskManager,
    cycle: int,
) -> tuple[float, float]:
    """One worker's life: (seconds to be seen after its first beat, seconds to be missed
    after its death)."""
    hb = profile.heartbeat
    hostname = unique_hostname("bench")
    # Every watcher starts before the worker does, so none of them can miss its moment.
    first_beat = asyncio.create_task(_first_beat(client, hostname, limit=60))
    routed = asyncio.create_task(_wait_route(manager, "celery", limit=60))
    # The constructor blocks until the heartbeat is in Redis: run it off the loop, so the
    # monitor keeps polling and the watchers keep watching while the worker boots.
    spawn = asyncio.to_thread(
        CeleryWorker,
        redis_url,
        log_path=workspace.log_path(f"detection-worker-{cycle}"),
        concurrency=1,
        hostname=hostname,
        heartbeat_interval=hb,
        task_modules=",".join(TASK_MODULES),
    )
    try:
        worker = await spawn
    except BaseException:
        first_beat.cancel()
        routed.cancel()
        raise
    with worker:
        beat_at, seen_at = await first_beat, await routed
        # Let it beat for a while, so the kill lands at a different point of its cycle.
        await asyncio.sleep(hb * (1 + (cycle % 3) / 3))
        killed_at = time.time()
        worker.kill()
        missed_at = await _wait_route(manager, "background", limit=10 * hb)
    return seen_at - beat_at, missed_at - killed_at


def _latency_result(
    *, key: str, name: str, samples: list[float], target: float, means: str, when_missed: str
) -> Result:
    value = statistics.median(samples)
    return Result(
        key=key,
        name=name,
        unit="s",
        baseline=None,
        tasklane=value,
        ratio=value / target,
        ratio_means=means,
        target=Target("max", 1.0),
        target_text=f"<= {target:g} s",
        samples={"tasklane": samples},
        when_missed=when_missed,
    )
