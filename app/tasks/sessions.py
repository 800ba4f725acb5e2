"""cleanup_sessions: remove audio sessions whose expiry has passed (scheduled every 10 min)."""

from __future__ import annotations

import logging
import time

from app.core.tasks import task
from app.tasks.data import get_domain_data

log = logging.getLogger("tasklane.tasks.sessions")


@task(idempotent=True)
async def cleanup_sessions() -> dict[str, object]:
    """Delete every session with expires_at in the past; returns how many went."""
    data = get_domain_data()
    now = time.time()
    sessions = await data.sessions()
    expired = [sid for sid, session in sessions.items() if session["expires_at"] < now]
    removed = await data.delete_sessions(expired) if expired else 0
    log.info("sessions cleaned up", extra={"sessions": len(sessions), "removed": removed})
    return {"removed": removed}
