"""Which worker pod Kubernetes deletes when the replica count drops: the ReplicaSet controller's
ranking (pkg/controller/controller_utils.go, ActivePodsWithRanks.Less), reduced to what differs
between our local pods. Kubernetes does not know which Celery worker is busy, so neither does
this: a busy worker can be chosen, and it is the worker's warm shutdown (SIGTERM → finish the
running tasks within terminationGracePeriodSeconds) that keeps the task, not the choice.

Rules kept, in order: not ready before ready; among ready pods the one ready most recently,
compared on a log2 scale of how long ago (LogarithmicScaleDown, default since 1.22), ties broken
by UID (pseudo-random); then the most recently created, same scale, same tie-break. Rules that
cannot differ here (unscheduled pods, phase, deletion cost, pods per node, restarts) are left out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class PodView:
    """What the ranking reads of a pod; times are seconds on the caller's clock."""

    name: str
    uid: str
    created: float
    #: When the pod became ready (startup probe passed); None while it is not.
    ready_since: float | None


def _log_rank(since: float, now: float) -> int:
    # Kubernetes takes log2 of the age as a time.Duration, in nanoseconds.
    age_ns = (now - since) * 1e9
    return int(math.log2(age_ns)) if age_ns > 0 else -1


def _compare(a: PodView, b: PodView, now: float) -> int:
    """Negative when `a` is deleted before `b`."""
    if (a.ready_since is None) != (b.ready_since is None):
        return -1 if a.ready_since is None else 1
    for first, second in ((a.ready_since, b.ready_since), (a.created, b.created)):
        if first is None or second is None or first == second:
            continue
        difference = _log_rank(first, now) - _log_rank(second, now)
        if difference:
            return difference
        return -1 if a.uid < b.uid else 1
    return 0


def deletion_order(pods: Iterable[PodView], now: float) -> list[PodView]:
    """`pods` sorted the way the ReplicaSet controller picks victims: first is deleted first."""
    return sorted(pods, key=functools.cmp_to_key(lambda a, b: _compare(a, b, now)))
