"""LocalScheduler: runs the periodic schedule inside the api process (single mode).

Among several api replicas sharing Redis only the holder of the `scheduler` lease submits. Each
run gets the id `schedule:{entry}:{slot}` (slot = whole intervals since the epoch), so even two
schedulers that briefly both believe they lead create one task per slot: the second submit of
the same id returns the first record instead of running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core.tasks.errors import TasklaneError
from app.core.tasks.models import SubmitOptions

if TYPE_CHECKING:
    from app.core.tasks.manager import TaskManager

log = logging.getLogger("tasklane.scheduler")

LEASE = "scheduler"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntry:
    """Submit `task` every `every` seconds (first run one interval after start, as beat does)."""

    name: str
    task: str
    every: float
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def slot(self, now: float) -> int:
        return int(now // self.every)


class LocalScheduler:
    """Submits due schedule entries through the TaskManager while holding the lease."""

    def __init__(
        self,
        manager: TaskManager,
        entries: Iterable[ScheduleEntry],
        *,
        tick: float = 2.0,
        lease_ttl: float = 15.0,
        owner: str | None = None,
    ) -> None:
        self.manager = manager
        self.entries = tuple(entries)
        self.tick = tick
        self.lease_ttl = lease_ttl
        self.owner = owner or getattr(manager.executor, "runner_id", f"scheduler-{id(self)}")
        self._next_slot: dict[str, int] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.leading = False

    async def start(self) -> None:
        now = time.time()
        self._next_slot = {entry.name: entry.slot(now) + 1 for entry in self.entries}
        self._loop_task = asyncio.get_running_loop().create_task(
            self._run(), name="tasklane-scheduler"
        )

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self.leading:
            with contextlib.suppress(TasklaneError):
                await self.manager.store.release_lease(LEASE, self.owner)
            self.leading = False

    async def run_due(self, now: float | None = None) -> list[str]:
        """Submit every entry whose next slot has begun; returns the submitted task ids."""
        now = time.time() if now is None else now
        submitted = []
        for entry in self.entries:
            slot = entry.slot(now)
            if slot < self._next_slot.get(entry.name, slot):
                continue
            try:
                task_id = await self.manager.submit(
                    entry.task,
                    *entry.args,
                    options=SubmitOptions(task_id=f"schedule:{entry.name}:{slot}"),
                    **entry.kwargs,
                )
            except TasklaneError as exc:
                # One bad or refused entry must not hold back the others; it is tried again
                # next tick (its slot was not consumed).
                log.warning("scheduled %s not submitted: %s", entry.task, exc)
                continue
            self._next_slot[entry.name] = slot + 1
            submitted.append(task_id)
            log.info("scheduled %s", entry.task, extra={"entry": entry.name, "task_id": task_id})
        return submitted

    async def _run(self) -> None:
        while True:
            try:
                self.leading = await self.manager.store.acquire_lease(
                    LEASE, self.owner, self.lease_ttl
                )
                if self.leading:
                    await self.run_due()
            except TasklaneError as exc:
                log.warning("scheduler tick skipped: %s", exc)
            except Exception:
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.tick)
