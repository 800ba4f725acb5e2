"""The tasks the benchmarks run: tasklane no-ops and their plain-Celery twin.

Loaded through TASKLANE_TASK_MODULES=scripts.bench.tasks by workers and servers the benchmarks
start. The bodies do nothing on purpose: what is measured is everything around a body.
"""

from __future__ import annotations

from celery import shared_task

from app.core.tasks import task

#: The light queue every light task (and the raw twin, by task_default_queue) goes to.
LIGHT_QUEUE = "light"


@task("bench_noop")
def bench_noop(i: int = 0) -> None:
    """A light sync no-op (Celery-side benchmarks)."""


@task("bench_noop_async")
async def bench_noop_async(i: int = 0) -> None:
    """A light async no-op: what the HTTP benchmark's bare endpoint schedules too."""


@task("bench_heavy", weight="heavy")
def bench_heavy() -> None:
    """A heavy no-op: the hybrid routes it by worker liveness (detection benchmark)."""


# shared_task, not celery_app.task: this module is imported while app.workers.celery_app is
# still being built (autodiscover runs first), so it binds to the app once it is finalised.
# Plain Celery Task class, no tasklane record or lifecycle: the baseline.
@shared_task(name="bench_raw_noop", ignore_result=True)
def bench_raw_noop(i: int = 0) -> None:
    """The raw Celery twin of bench_noop."""
