"""Evidence of rate-limit re-publishing, for one test's worker (TASKLANE_TASK_MODULES adds this
module there only): what a worker sent when it deferred a celery_rate_limited message.

Never import it anywhere else (a test module included): any before_task_publish receiver in a
process turns off the one-call publish fast path there (app/core/tasks/executors/wire.py).
"""

from __future__ import annotations

import json
from typing import Any

from celery import signals

from scripts.harness.celery_sample_tasks import _redis


@signals.before_task_publish.connect
def _note_rate_limit_republish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """A re-published celery_rate_limited message (its only publish with an ETA): its priority
    and Celery retries count, in `republished:{task id}`."""
    headers = headers or {}
    if sender != "celery_rate_limited" or not headers.get("eta"):
        return
    note = {"priority": (properties or {}).get("priority"), "retries": headers.get("retries")}
    _redis().rpush(f"republished:{headers['id']}", json.dumps(note))
