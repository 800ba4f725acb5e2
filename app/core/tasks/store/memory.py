"""In-process ResultStore for the embedded single mode: no service, lost on restart.

A threading.Lock (not asyncio.Lock) guards the maps: operations never await while holding it,
and the store must survive being used from more than one event loop (tests, scripts).

Each record is kept as one flat tuple of plain values (_Row), not as the TaskResult: the cyclic
GC untracks a tuple holding only atomic values, so the up to max_records rows are not scanned by
every full collection (with TaskResult objects, each a record, its tuple and its args list,
those passes stalled requests for tens of ms: benchmark (d) p99). Every read builds a new
TaskResult, with its own args list and kwargs dict.

Bounded twice: by count (max_records) and by bytes (max_bytes, TASKLANE_MEMORY_STORE_MAX_BYTES):
each row is charged the JSON size of its arguments, result and error texts plus ROW_OVERHEAD.
Finished (or expired) records go first, oldest first; an unfinished one is never dropped (its
task would lose its record while it waits or runs), so when unfinished records alone would pass
max_bytes a new one is refused with StoreFull (503, retry later) instead: back-pressure on a
submit flood that outruns the runner, where admitting it would leave memory unbounded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from app.core.tasks.arguments import json_size
from app.core.tasks.errors import StoreFull
from app.core.tasks.models import FINISHED_STATUSES, Progress, TaskError, TaskResult, TaskStatus
from app.core.tasks.store import NO_RIDERS, Mutation, QueuePush, ResultStore, Riders

#: Default byte budget (TASKLANE_MEMORY_STORE_MAX_BYTES).
DEFAULT_MAX_BYTES = 256 * 1_048_576
#: Bytes charged per record on top of its JSON sizes: the row tuple, its id, name, timestamps
#: and the other fixed fields as Python objects (about 0.9 KiB measured on CPython 3.11).
ROW_OVERHEAD = 1024


class MemoryStore(ResultStore):
    kind = "memory"
    push_url: str | None = None

    def __init__(
        self,
        *,
        result_ttl: float = 86_400,
        max_records: int = 10_000,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._ttl = result_ttl
        self._max = max_records
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        # task id -> its row (expires_at first); insertion order = submission order.
        self._records: OrderedDict[str, _Row] = OrderedDict()
        # Sum of the rows' charges (_SIZE), all of them and the unfinished ones: kept by _put()
        # and _drop(), the only two places rows come and go.
        self._bytes = 0
        self._unfinished_bytes = 0
        self._claims: dict[str, str] = {}
        self._runners: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    async def create_many(
        self,
        records: Sequence[TaskResult],
        *,
        pushes: Sequence[QueuePush | None] | None = None,
    ) -> list[tuple[TaskResult, bool]]:
        if pushes is not None and any(push is not None for push in pushes):
            raise ValueError("the memory store has no broker to push a message to")
        with self._lock:
            charges = self._admit(records)
            return [self._create(record, charges.get(record.task_id)) for record in records]

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
            row = self._records[task_id]
            # Arguments never change after submit: reuse their measured size when the mutation
            # kept them (replace() passes the same list and dict on), instead of measuring again.
            same = new.args is current.args and new.kwargs is current.kwargs
            new_row = _row(new, time.monotonic() + self._ttl, row if same else None)
            self._put(task_id, new_row)
            if new_row[_SIZE] > row[_SIZE]:  # a result or an error arrived: may need room
                self._evict(keep=task_id)
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

    def _create(self, record: TaskResult, charge: int | None) -> tuple[TaskResult, bool]:
        existing = self._live(record.task_id)
        if existing is not None:
            return existing, False
        self._put(record.task_id, _row(record, time.monotonic() + self._ttl, charge=charge))
        self._evict(keep=record.task_id)
        return record, True

    def _admit(self, records: Sequence[TaskResult]) -> dict[str, int]:
        """The new records' charges, by id; raises StoreFull, before anything is written, when
        they would not fit next to the unfinished ones (finished ones make room: _evict)."""
        charges = {
            r.task_id: _charge(r.args, r.kwargs) for r in records if r.task_id not in self._records
        }
        needed = sum(charges.values())
        if needed and self._unfinished_bytes + needed > self._max_bytes:
            raise StoreFull(self._unfinished_bytes, needed, self._max_bytes)
        return charges

    def _live(self, task_id: str) -> TaskResult | None:
        row = self._records.get(task_id)
        if row is None:
            return None
        if row[0] <= time.monotonic():
            self._drop(task_id)
            return None
        return _record(row)

    def _put(self, task_id: str, row: _Row) -> None:
        old = self._records.get(task_id)
        if old is not None:
            self._forget_size(old)
        self._records[task_id] = row  # an existing key keeps its place (submission order)
        self._bytes += row[_SIZE]
        if row[_STATUS] not in _FINISHED:
            self._unfinished_bytes += row[_SIZE]

    def _drop(self, task_id: str) -> None:
        self._forget_size(self._records.pop(task_id))

    def _forget_size(self, row: _Row) -> None:
        self._bytes -= row[_SIZE]
        if row[_STATUS] not in _FINISHED:
            self._unfinished_bytes -= row[_SIZE]

    def _evict(self, *, keep: str) -> None:
        """Drop the oldest finished (or expired) records while over either cap, never an
        unfinished one, nor `keep` (the record just written: its reader is about to come)."""
        count, size = len(self._records), self._bytes
        if count <= self._max and size <= self._max_bytes:
            return
        now = time.monotonic()
        doomed = []
        for task_id, row in self._records.items():
            if count <= self._max and size <= self._max_bytes:
                break
            if task_id != keep and (row[_STATUS] in _FINISHED or row[0] <= now):
                doomed.append(task_id)
                count -= 1
                size -= row[_SIZE]
        for task_id in doomed:
            self._drop(task_id)


#: (expires_at, args_size, size, task_id, name, status, executor, queue, args, kwargs, result,
#: error, attempts, progress, submitted_at, started_at, finished_at, worker, cancel_requested,
#: priority, rate_limited_until):
#: args_size the charge for args and kwargs (_charge), size the whole row's; args a tuple,
#: kwargs a tuple of its items, error and progress tuples of their fields, status the plain
#: str. The GC untracks a tuple only when no item is a container other than an untracked
#: tuple: a dict (even an untracked one) or an enum member would keep the row tracked.
_Row = tuple[Any, ...]
_ARGS_SIZE = 1
_SIZE = 2
_NAME = 4
_STATUS = 5
_ARGS = 8
_KWARGS = 9
_STATUSES = {status.value: status for status in TaskStatus}
_FINISHED = frozenset(status.value for status in FINISHED_STATUSES)


def _charge(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """What a record's arguments cost the budget: their JSON size plus ROW_OVERHEAD."""
    return ROW_OVERHEAD + _size([args, kwargs])


def _size(value: Any) -> int:
    try:
        return json_size(value)
    except (TypeError, ValueError, RecursionError):
        # submit() and execute() store only checked JSON; a record built by hand may hold
        # anything, and the store never refused that.
        return len(repr(value))


def _row(
    record: TaskResult,
    expires_at: float,
    previous: _Row | None = None,
    *,
    charge: int | None = None,
) -> _Row:
    """The row of record; `previous` (the stored row of the same arguments) lends its args
    tuples and their charge, or `charge` is that charge, already measured."""
    error, progress = record.error, record.progress
    if previous is None:
        args, kwargs = tuple(record.args), tuple(record.kwargs.items())
        args_size = _charge(record.args, record.kwargs) if charge is None else charge
    else:
        args, kwargs, args_size = previous[_ARGS], previous[_KWARGS], previous[_ARGS_SIZE]
    size = args_size
    if record.result is not None:
        size += _size(record.result)
    if error is not None:
        size += len(error.type) + len(error.message) + len(error.traceback)
    if progress is not None:
        size += len(progress.message)
    return (
        expires_at,
        args_size,
        size,
        record.task_id,
        record.name,
        record.status.value,
        record.executor,
        record.queue,
        args,
        kwargs,
        record.result,
        None if error is None else (error.type, error.message, error.traceback),
        record.attempts,
        None if progress is None else (progress.fraction, progress.message),
        record.submitted_at,
        record.started_at,
        record.finished_at,
        record.worker,
        record.cancel_requested,
        record.priority,
        record.rate_limited_until,
    )


def _record(row: _Row) -> TaskResult:
    (
        _,
        _,
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
        priority,
        rate_limited_until,
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
        priority=priority,
        rate_limited_until=rate_limited_until,
    )
