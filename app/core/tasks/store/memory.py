"""In-process ResultStore for the embedded single mode: no service, lost on restart.

A threading.Lock (not asyncio.Lock) guards the maps: operations never await while holding it,
and the store must survive being used from more than one event loop (tests, scripts).

Each record is kept as one flat tuple of plain values (_Row), not as the TaskResult: the cyclic
GC untracks a tuple holding only atomic values, so the up to max_records rows are not scanned by
every full collection (with TaskResult objects, each a record, its tuple and its args list,
those passes stalled requests for tens of ms: benchmark (d) p99). Every read builds a new
TaskResult, with its own args list and kwargs dict.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from app.core.tasks.models import FINISHED_STATUSES, Progress, TaskError, TaskResult, TaskStatus
from app.core.tasks.store import NO_RIDERS, Mutation, QueuePush, Riders


class MemoryStore:
    kind = "memory"
    push_url: str | None = None

    def __init__(self, *, result_ttl: float = 86_400, max_records: int = 10_000) -> None:
        self._ttl = result_ttl
        self._max = max_records
        self._lock = threading.Lock()
        # task id -> its row (expires_at first); insertion order = submission order.
        self._records: OrderedDict[str, _Row] = OrderedDict()
        self._claims: dict[str, str] = {}
        self._runners: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    async def create(
        self, record: TaskResult, *, push: QueuePush | None = None
    ) -> tuple[TaskResult, bool]:
        [outcome] = await self.create_many([record], pushes=[push])
        return outcome

    async def create_many(
        self,
        records: Sequence[TaskResult],
        *,
        pushes: Sequence[QueuePush | None] | None = None,
    ) -> list[tuple[TaskResult, bool]]:
        if pushes is not None and any(push is not None for push in pushes):
            raise ValueError("the memory store has no broker to push a message to")
        with self._lock:
            return [self._create(record) for record in records]

    async def get(self, task_id: str) -> TaskResult | None:
        with self._lock:
            return self._live(task_id)

    async def update(
        self,
        task_id: str,
        mutate: Mutation,
        *,
        expected: TaskResult | None = None,
        riders: Riders = NO_RIDERS,
    ) -> TaskResult | None:
        # `expected` only saves Redis a read; here the stored record is at hand anyway.
        # `riders` name Redis keys this store does not have: nothing to carry them to.
        with self._lock:
            current = self._live(task_id)
            if current is None:
                return None
            new = mutate(current)
            if new is None:
                return None
            self._records[task_id] = _row(new, time.monotonic() + self._ttl)
            return new

    async def list(
        self,
        *,
        status: TaskStatus | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> list[TaskResult]:
        now = time.monotonic()
        with self._lock:
            found: list[TaskResult] = []
            for row in reversed(self._records.values()):
                if row[0] <= now:
                    continue
                if status is not None and row[_STATUS] != status:
                    continue
                if name is not None and row[_NAME] != name:
                    continue
                found.append(_record(row))
                if len(found) >= limit:
                    break
            return found

    async def claim(self, task_id: str, owner: str) -> None:
        with self._lock:
            self._claims[task_id] = owner

    async def release(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._claims.pop(task_id, None)

    async def claims(self) -> dict[str, str]:
        with self._lock:
            return dict(self._claims)

    async def heartbeat(self, owner: str, ttl: float) -> None:
        with self._lock:
            self._runners[owner] = time.monotonic() + ttl

    async def forget_runner(self, owner: str) -> None:
        with self._lock:
            self._runners.pop(owner, None)

    async def live_runners(self, owners: Iterable[str]) -> set[str]:
        now = time.monotonic()
        with self._lock:
            return {owner for owner in owners if self._runners.get(owner, 0) > now}

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            holder = self._leases.get(name)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            self._leases[name] = (owner, now + ttl)
            return True

    async def release_lease(self, name: str, owner: str) -> None:
        with self._lock:
            holder = self._leases.get(name)
            if holder is not None and holder[0] == owner:
                del self._leases[name]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _create(self, record: TaskResult) -> tuple[TaskResult, bool]:
        existing = self._live(record.task_id)
        if existing is not None:
            return existing, False
        self._records[record.task_id] = _row(record, time.monotonic() + self._ttl)
        self._evict()
        return record, True

    def _live(self, task_id: str) -> TaskResult | None:
        row = self._records.get(task_id)
        if row is None:
            return None
        if row[0] <= time.monotonic():
            del self._records[task_id]
            return None
        return _record(row)

    def _evict(self) -> None:
        """Drop the oldest finished records above the cap; unfinished ones are never dropped."""
        excess = len(self._records) - self._max
        if excess <= 0:
            return
        now = time.monotonic()
        doomed = []
        for task_id, row in self._records.items():
            if row[_STATUS] in _FINISHED or row[0] <= now:
                doomed.append(task_id)
                if len(doomed) >= excess:
                    break
        for task_id in doomed:
            del self._records[task_id]


#: (expires_at, task_id, name, status, executor, queue, args, kwargs, result, error, attempts,
#: progress, submitted_at, started_at, finished_at, worker, cancel_requested): args a tuple,
#: kwargs a tuple of its items, error and progress tuples of their fields, status the plain
#: str. The GC untracks a tuple only when no item is a container other than an untracked
#: tuple: a dict (even an untracked one) or an enum member would keep the row tracked.
_Row = tuple[Any, ...]
_NAME = 2
_STATUS = 3
_STATUSES = {status.value: status for status in TaskStatus}
_FINISHED = frozenset(status.value for status in FINISHED_STATUSES)


def _row(record: TaskResult, expires_at: float) -> _Row:
    error, progress = record.error, record.progress
    return (
        expires_at,
        record.task_id,
        record.name,
        record.status.value,
        record.executor,
        record.queue,
        tuple(record.args),
        tuple(record.kwargs.items()),
        record.result,
        None if error is None else (error.type, error.message, error.traceback),
        record.attempts,
        None if progress is None else (progress.fraction, progress.message),
        record.submitted_at,
        record.started_at,
        record.finished_at,
        record.worker,
        record.cancel_requested,
    )


def _record(row: _Row) -> TaskResult:
    (
        _,
        task_id,
        name,
        status,
        executor,
        queue,
        args,
        kwargs,
        result,
        error,
        attempts,
        progress,
        submitted_at,
        started_at,
        finished_at,
        worker,
        cancel_requested,
    ) = row
    return TaskResult(
        task_id=task_id,
        name=name,
        status=_STATUSES[status],
        executor=executor,
        queue=queue,
        args=list(args),
        kwargs=dict(kwargs),
        result=result,
        error=None
        if error is None
        else TaskError(type=error[0], message=error[1], traceback=error[2]),
        attempts=attempts,
        progress=None if progress is None else Progress(fraction=progress[0], message=progress[1]),
        submitted_at=submitted_at,
        started_at=started_at,
        finished_at=finished_at,
        worker=worker,
        cancel_requested=cancel_requested,
    )
