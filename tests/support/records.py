"""Task records in a test's Redis, read (and created like the api does) without an app: the
integration tests of real Celery workers check outcomes through this."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
import redis

from app.core.tasks.models import TaskResult, TaskStatus
from app.core.tasks.store.redis import RedisStore, decode
from scripts.harness.celery_processes import CeleryWorker

FINISHED = {TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.CANCELLED}


class Records:
    """Reads (and, like the api, creates) task records in the test's Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def create(self, name: str, args: list[Any], queue: str) -> TaskResult:
        """A PENDING record for the celery executor, as TaskManager.submit writes it."""
        record = TaskResult(
            task_id=str(uuid.uuid4()),
            name=name,
            status=TaskStatus.PENDING,
            executor="celery",
            queue=queue,
            args=args,
        )

        async def create() -> None:
            store = RedisStore(self.url)
            try:
                await store.create(record)
            finally:
                await store.close()

        asyncio.run(create())
        return record

    def get(self, task_id: str) -> TaskResult | None:
        raw = self.client.get(f"tasklane:task:{task_id}")
        return decode(raw) if raw is not None else None

    def named(self, name: str) -> list[TaskResult]:
        found = (self.get(key.split(":", 2)[2]) for key in self.client.scan_iter("tasklane:task:*"))
        return [record for record in found if record is not None and record.name == name]

    def wait(
        self,
        task_ids: Iterable[str],
        statuses: set[TaskStatus],
        worker: CeleryWorker,
        timeout: float = 20.0,
    ) -> list[TaskResult]:
        """Poll until every id has one of `statuses`; the worker's log explains a timeout."""
        ids = list(task_ids)
        deadline = time.monotonic() + timeout
        while True:
            records = [self.get(task_id) for task_id in ids]
            if all(record is not None and record.status in statuses for record in records):
                return records  # type: ignore[return-value]
            if time.monotonic() > deadline:
                states = {
                    i: r.status.value if r else None for i, r in zip(ids, records, strict=True)
                }
                pytest.fail(f"not {statuses} in {timeout} s: {states}\n{worker.log()[-4000:]}")
            time.sleep(0.05)
