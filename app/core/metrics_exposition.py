"""How a process exposes the metrics: one process's registry, or a whole pod's processes.

prometheus_client keeps each process's samples in memory, unless PROMETHEUS_MULTIPROC_DIR is
set *before it is imported*: then every process (uvicorn workers, Celery prefork children)
writes its samples to files there, and one endpoint per pod reads them all
(MultiProcessCollector). The launch commands (`tasklane serve`, `tasklane worker`) prepare the
folder before any of that happens (app/core/metrics_dir.py).

Dead processes: counters and histograms of a process that exited stay in the sum (they are
counts that happened); its "live" gauges must go, so each scrape first sweeps the files of pids
that no longer exist. That covers a SIGKILLed pool child, which never runs an exit hook.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    start_http_server,
)

from app.core.metrics_dir import SAMPLE_FILE, multiprocess_dir

log = logging.getLogger("tasklane.metrics")


def sweep_dead_processes(path: Path) -> list[int]:
    """Mark every pid with sample files but no process as dead (drops its live gauges)."""
    dead: set[int] = set()
    for entry in path.glob("gauge_live*_*.db"):
        match = SAMPLE_FILE.match(entry.name)
        if match is None:
            continue
        pid = int(match.group("pid"))
        if not _alive(pid):
            dead.add(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class PodCollector(multiprocess.MultiProcessCollector):
    """MultiProcessCollector that sweeps dead processes before every collection."""

    def __init__(self, registry: CollectorRegistry | None, path: Path) -> None:
        self.folder = path
        super().__init__(registry, str(path))

    def collect(self):  # type: ignore[no-untyped-def] - prometheus_client's own signature
        sweep_dead_processes(self.folder)
        return super().collect()


_registry: CollectorRegistry | None = None


def exposition_registry() -> CollectorRegistry:
    """The registry /metrics serves: the whole pod's samples, or this process's own."""
    global _registry
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    if _registry is None:
        registry = CollectorRegistry()
        PodCollector(registry, folder)  # registers itself with `registry`
        _registry = registry
    return _registry


def render_latest() -> tuple[bytes, str]:
    """(body, content type) of a scrape of exposition_registry()."""
    return generate_latest(exposition_registry()), CONTENT_TYPE_LATEST


def start_metrics_server(host: str, port: int) -> tuple[WSGIServer, Thread] | None:
    """Serve exposition_registry() on http://host:port/metrics from a daemon thread.

    None (and an error logged) when the port is taken: a worker without its metrics endpoint
    still runs tasks, which matters more than being scraped.
    """
    try:
        return start_http_server(port, addr=host, registry=exposition_registry())
    except OSError as exc:
        log.error("metrics endpoint not started on %s:%s: %s", host, port, exc)
        return None
