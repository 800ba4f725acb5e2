"""glibc heap tuning for a process that handles megabyte-sized values (request bodies, task
arguments and their JSON, base64 audio).

glibc serves an allocation of M_MMAP_THRESHOLD (128 KiB) or more with its own mmap and gives
it back to the system on free. But by default each such free raises the threshold to the
block's size (up to 32 MiB), so after the first big request every later megabyte-sized buffer
comes from the heap, whose freed space stays in the process, fragmented, instead of going
back. Measured on a single-mode api after 20 WebSocket sessions of 15 MB audio: once the
records were dropped, RSS stayed at 360 MB (73 MB after malloc_trim) with the default, and
fell to 73 MB by itself with the threshold fixed. Fixing it (mallopt also turns the dynamic
adjustment off) keeps RSS close to the live data, which the byte budgets bound.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: mallopt's parameter number for the mmap threshold (glibc malloc.h).
_M_MMAP_THRESHOLD = -3
#: glibc's own default, kept fixed instead of adjusted upwards.
MMAP_THRESHOLD = 128 * 1024


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold so big freed blocks go back to the system; True when set.

    A no-op elsewhere (musl, macOS) and when MALLOC_MMAP_THRESHOLD_ is set (the operator's
    own choice wins; glibc read it at start-up).
    """
    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not done:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused: freed big blocks may stay in the heap")
    return done
