"""Which tasks are heavy and which Celery queue each one goes to: the one place that decides.

A task is heavy when its spec says weight="heavy" or its name is in HEAVY_TASKS (the migration
guide's list). Specs name the logical queues "light" and "heavy" (the registry's defaults); a
deployment may rename them (TASKLANE_LIGHT_QUEUE / TASKLANE_HEAVY_QUEUE). A custom queue a spec
chose stays as written; otherwise heavy tasks (or queue="heavy") go to the heavy queue and the
rest to the light one. Routing, publishing, the worker monitor and the workers' own task routes
all ask this module, so they always agree on which Redis list a task waits in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings
    from app.core.tasks.models import TaskSpec

#: The queue names specs use for "the light one" and "the heavy one".
LOGICAL_QUEUES = frozenset({"light", "heavy"})


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRouting:
    """The configured queue names and HEAVY_TASKS."""

    light: str = "light"
    heavy: str = "heavy"
    heavy_tasks: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueRouting:
        return cls(
            light=settings.light_queue,
            heavy=settings.heavy_queue,
            heavy_tasks=frozenset(settings.heavy_tasks),
        )

    def is_heavy(self, spec: TaskSpec) -> bool:
        """Heavy tasks prefer a Celery worker; light ones run in-process."""
        return spec.weight == "heavy" or spec.name in self.heavy_tasks

    def queue_for(self, spec: TaskSpec) -> str:
        """The Celery queue a task of this spec is published to."""
        if spec.queue not in LOGICAL_QUEUES:
            return spec.queue
        if spec.queue == "heavy" or self.is_heavy(spec):
            return self.heavy
        return self.light

    def queues(self, specs: Iterable[TaskSpec] = ()) -> set[str]:
        """Both standard queues plus every queue one of `specs` is published to."""
        return {self.light, self.heavy} | {self.queue_for(spec) for spec in specs}
