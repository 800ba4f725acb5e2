"""send_notification: append a message to the recipient's outbox, once per task id.

The notification id is the task id, so a retry or a redelivered Celery message finds the entry
already there and sends nothing twice. Delivery is a log line for every channel in this example.
"""

from __future__ import annotations

import logging

from app.core.tasks import TaskContext, task
from app.tasks.data import get_domain_data
from app.tasks.data.common import now_iso

log = logging.getLogger("tasklane.tasks.notify")

CHANNELS = frozenset({"log", "email", "push"})


@task(idempotent=True, takes_context=True)
async def send_notification(
    ctx: TaskContext, recipient: str, message: str, channel: str = "log"
) -> dict[str, object]:
    """Record the notification in the outbox and log it.

    Raises ValueError for an unknown channel or an empty recipient (the record ends FAILURE).
    """
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {sorted(CHANNELS)}, not {channel!r}")
    if not recipient.strip():
        raise ValueError("recipient must not be empty")
    notification = {
        "id": ctx.task_id,
        "recipient": recipient,
        "message": message,
        "channel": channel,
        "sent_at": now_iso(),
    }
    added = await get_domain_data().add_notification(ctx.task_id, notification)
    fields = {"task_id": ctx.task_id, "recipient": recipient, "channel": channel}
    if added:
        log.info("notification sent", extra={**fields, "chars": len(message)})
    else:
        log.info("notification already sent", extra=fields)
    return {"id": ctx.task_id, "recipient": recipient, "channel": channel, "duplicate": not added}
