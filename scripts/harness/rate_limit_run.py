"""One run of the global rate-limit proof (issue 13): real Celery workers and the in-process
plane on one real Redis, a task limited to 10/s, N submits, the actual start times measured.

    result = run(redis_url, workdir, tasks=300)                           # tasklane's limit
    result = run(redis_url, workdir, tasks=300, celery_rate_limit=True)   # Celery's own one

tasklane's limit: half the submits go to the in-process plane (a TaskManager with the
background executor on the same Redis, in this process), half to `workers` Celery worker
processes (prefork, `concurrency` each); all of them share one limit. While the limited tasks
wait, unlimited probes are submitted to the same worker queue and their start delay measured.

Celery's own rate_limit (celery_rate_limit=True): tasklane's limit is switched off
(TASKLANE_RATE_LIMITS=celery_rate_limited=none) and Celery's per-worker one set on every worker
(`control.rate_limit`, the documented way); every submit goes to the workers, since the
in-process plane has no Celery limit. That is the contrast of celery/celery#5732: each worker
instance keeps "10/s" on its own.

Used by tests/integration/test_global_rate_limit.py; as a script it prints the figures of
one run (on a redis-server of its own; both modes with --both):

    .venv/bin/python -m scripts.harness.rate_limit_run [--celery-rate-limit | --both] [--tasks N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis

from app.config import Settings
from app.wiring import build_task_manager
from app.workers.celery_config import create_celery_app
from scripts.harness.celery_processes import SAMPLE_TASK_MODULES, CeleryWorker
from scripts.harness.processes import RedisServer

#: Declared with rate_limit="10/s" in scripts/harness/celery_sample_tasks.py.
LIMITED = "celery_rate_limited"
LIMIT_PER_SECOND = 10
#: An unlimited task on the same queue ("light").
FREE = "celery_add"
#: Unlimited probes submitted while the limited tasks wait.
PROBES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRun:
    """What one run measured."""

    statuses: dict[str, int]
    starts: list[datetime]
    #: Per plane ("background" | "celery"): how many limited tasks started there.
    planes: dict[str, int]
    #: Seconds from submit to start of each unlimited probe.
    probe_waits: list[float]
    #: Attempts the limited tasks' records show (waiting for a slot uses none).
    attempts: set[int]
    #: What KEDA's triggers for the queue read (its list + its active set), at each probe.
    backlog: list[int]

    def most_in_one_second(self) -> int:
        return most_starts_in_one_window(self.starts, 1.0)

    def rate(self) -> float:
        """Starts per second from the first start to the last."""
        ordered = sorted(self.starts)
        span = (ordered[-1] - ordered[0]).total_seconds()
        return (len(ordered) - 1) / span if span > 0 else float("inf")


def most_starts_in_one_window(starts: list[datetime], window: float) -> int:
    """The largest number of start times inside any `window`-second span."""
    ordered = sorted(starts)
    best, first = 0, 0
    for last, end in enumerate(ordered):
        while (end - ordered[first]).total_seconds() >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def run(
    redis_url: str,
    workdir: Path,
    *,
    tasks: int = 300,
    workers: int = 3,
    concurrency: int = 2,
    celery_rate_limit: bool = False,
) -> RateRun:
    """Start the workers, submit, wait for every task, stop the workers; see the module doc."""
    overrides = {"TASKLANE_RATE_LIMITS": f"{LIMITED}=none"} if celery_rate_limit else {}
    with contextlib.ExitStack() as stack:
        pool = [
            stack.enter_context(
                CeleryWorker(
                    redis_url,
                    log_path=workdir / f"worker-{n}.log",
                    queues=("light",),
                    concurrency=concurrency,
                    env=overrides,
                )
            )
            for n in range(workers)
        ]
        if celery_rate_limit:
            _celery_rate_limit(redis_url, len(pool))
        return asyncio.run(_submit_and_wait(redis_url, tasks, celery_rate_limit))


def _settings(redis_url: str, executor: str, celery_rate_limit: bool) -> Settings:
    return Settings(
        executor=executor,
        store="redis",
        redis_url=redis_url,
        celery_broker_url=redis_url,
        task_modules=SAMPLE_TASK_MODULES.split(","),
        scheduler="off",
        rate_limits=f"{LIMITED}=none" if celery_rate_limit else "",
    )


def _celery_rate_limit(redis_url: str, workers: int) -> None:
    app = create_celery_app(_settings(redis_url, "celery", True))
    answered: set[str] = set()
    try:
        # A busy worker may miss one broadcast's reply window: ask again (it is idempotent).
        for _ in range(5):
            replies = app.control.rate_limit(
                LIMITED, f"{LIMIT_PER_SECOND}/s", reply=True, timeout=2
            )
            answered |= {name for reply in replies for name in reply}
            if len(answered) >= workers:
                return
    finally:
        app.close()
    raise RuntimeError(f"Celery's rate_limit reached {len(answered)} of {workers} workers")


async def _submit_and_wait(redis_url: str, tasks: int, celery_rate_limit: bool) -> RateRun:
    local = build_task_manager(_settings(redis_url, "background", celery_rate_limit))
    remote = build_task_manager(_settings(redis_url, "celery", celery_rate_limit))
    await local.start()
    await remote.start()
    try:
        ids = []
        for n in range(tasks):
            manager = remote if celery_rate_limit or n % 2 else local
            ids.append(await manager.submit(LIMITED, n))
        probes, backlog = [], []
        broker = redis.Redis.from_url(redis_url)
        for _ in range(PROBES):
            await asyncio.sleep(2.0)
            backlog.append(broker.llen("light") + broker.zcard("tasklane:active:light"))
            probes.append(await remote.submit(FREE, 1, 2))
        broker.close()
        deadline = tasks / LIMIT_PER_SECOND * 3 + 60
        async with asyncio.timeout(deadline):
            records = [await remote.wait(task_id, timeout=deadline) for task_id in ids]
            finished_probes = [await remote.wait(task_id, timeout=deadline) for task_id in probes]
    finally:
        await local.stop(grace=5)
        await remote.stop(grace=0)
    statuses: dict[str, int] = {}
    planes: dict[str, int] = {}
    for record in records:
        statuses[record.status.value] = statuses.get(record.status.value, 0) + 1
        planes[record.executor] = planes.get(record.executor, 0) + 1
    return RateRun(
        statuses=statuses,
        starts=[r.started_at for r in records if r.started_at is not None],
        planes=planes,
        probe_waits=[
            (probe.started_at - probe.submitted_at).total_seconds()
            for probe in finished_probes
            if probe.started_at is not None
        ],
        attempts={record.attempts for record in records},
        backlog=backlog,
    )


def summary(result: RateRun) -> dict[str, object]:
    """The figures of one run, as the script prints them."""
    return {
        "statuses": result.statuses,
        "planes": result.planes,
        "starts": len(result.starts),
        "most_starts_in_one_second": result.most_in_one_second(),
        "start_rate_per_second": round(result.rate(), 2),
        "unlimited_probe_start_delay_s": [round(wait, 3) for wait in result.probe_waits],
        "queue_backlog_while_waiting": result.backlog,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--celery-rate-limit", action="store_true", help="Celery's own limit")
    mode.add_argument("--both", action="store_true", help="tasklane's, then Celery's own")
    parser.add_argument("--tasks", type=int, default=300)
    args = parser.parse_args(argv)
    modes = [False, True] if args.both else [args.celery_rate_limit]
    figures = {}
    for celery_rate_limit in modes:
        server = RedisServer()
        server.start()
        try:
            with tempfile.TemporaryDirectory(prefix="tasklane-rate-") as workdir:
                result = run(
                    server.url, Path(workdir), tasks=args.tasks, celery_rate_limit=celery_rate_limit
                )
        finally:
            server.cleanup()
        mode = "celery_rate_limit" if celery_rate_limit else "tasklane_rate_limit"
        figures[mode] = summary(result)
        print(json.dumps({mode: figures[mode]}), flush=True)
    return 0 if all(f["statuses"] == {"SUCCESS": args.tasks} for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
