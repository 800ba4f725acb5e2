"""The periodic maintenance schedule: one definition for single mode's in-process scheduler
and, in scaled mode, for Celery beat. Edit intervals here, nowhere else."""

from __future__ import annotations

from app.core.tasks.scheduler import ScheduleEntry

SCHEDULE: tuple[ScheduleEntry, ...] = (
    ScheduleEntry(name="cleanup-sessions", task="cleanup_sessions", every=600),
    ScheduleEntry(name="sync-impressions", task="sync_impressions_from_redis", every=300),
    ScheduleEntry(name="recalculate-all-ratings", task="calculate_all_ratings", every=3600),
)
