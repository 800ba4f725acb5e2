"""Presence keys written and read directly, for tests that set up or inspect a worker's
running tasks without a worker (the app writes them as riders of the record's writes)."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from app.core.tasks.presence import WorkerKeys, attempt_riders


def mark_active(
    client: redis.Redis, keys: WorkerKeys, hostname: str, task_id: str, queue: str
) -> None:
    """`hostname` runs task_id from `queue`: the entries its STARTED write would carry."""
    with client.pipeline(transaction=True) as pipe:
        for op in attempt_riders(keys, hostname, task_id, queue).before:
            pipe.execute_command(op.command, op.key, *op.args)
        pipe.execute()


def active_ids(client: redis.Redis, keys: WorkerKeys, queues: Iterable[str]) -> dict[str, set[str]]:
    """queue -> the task ids running from it."""
    return {queue: set(client.zrange(keys.active(queue), 0, -1)) for queue in queues}
