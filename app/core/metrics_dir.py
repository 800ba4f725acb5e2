"""The folder prometheus_client's multiprocess mode writes to, prepared by launch commands.

Kept apart from app/core/metrics_exposition.py on purpose: this module must not import
prometheus_client, because the library picks single- or multi-process storage when it is first
imported, from PROMETHEUS_MULTIPROC_DIR. `tasklane serve` and `tasklane worker` call
use_multiprocess_dir() before anything imports it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
#: The files prometheus_client writes: counter_<pid>.db, gauge_livesum_<pid>.db, ...
SAMPLE_FILE = re.compile(r"^(?P<kind>[a-z]+(?:_[a-z]+)?)_(?P<pid>\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The folder every process of this pod writes samples to, when multiprocess is on."""
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def prepare_multiprocess_dir(path: Path) -> int:
    """Create `path` and delete sample files an earlier run left in it; returns how many.

    A container restart keeps its emptyDir: without this, new processes would add to the old
    run's counts. Only prometheus_client's own `*_<pid>.db` files are removed, so pointing the
    variable at a folder that holds anything else never costs data.
    """
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for entry in path.iterdir():
        if entry.is_file() and SAMPLE_FILE.match(entry.name):
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def use_multiprocess_dir(*, required: bool, prefix: str) -> Path | None:
    """Prepare the folder PROMETHEUS_MULTIPROC_DIR names; when it is unset and several
    processes will write (`required`), create a private one and set the variable, so every
    child process inherits it. Returns the folder, or None for single-process metrics."""
    folder = multiprocess_dir()
    if folder is None:
        if not required:
            return None
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        os.environ[ENV_VAR] = str(folder)
    prepare_multiprocess_dir(folder)
    return folder


def ensure_multiprocess_dir_exists() -> None:
    """Create the folder PROMETHEUS_MULTIPROC_DIR names, if set (no wipe: other processes of
    the pod may be writing to it)."""
    folder = multiprocess_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
