"""Retry pacing and stream teardown for the Kubernetes watch threads (watch.py).

Kept apart from the informer loop: capped, jittered exponential backoff between failed lists,
and closing a watch stream that another thread is blocked reading.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from urllib3 import BaseHTTPResponse

log = logging.getLogger("tasklane.kubernetes")


class Backoff:
    """Capped exponential delays with jitter (half fixed, half random)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay / 2 + random.uniform(0, delay / 2)


def shutdown_stream(response: BaseHTTPResponse) -> None:
    """Unblock a read in progress on another thread (urllib3 >= 2.3), else close."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:
            shutdown()
        else:
            response.close()
    except Exception:  # the stream may be half-closed already; stopping must not fail
        log.debug("closing a watch stream failed", exc_info=True)
