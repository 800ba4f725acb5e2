"""The Celery worker's own /metrics endpoint, served by its main process (DESIGN.md §5).

Tasks run in prefork pool children; each child writes its samples to PROMETHEUS_MULTIPROC_DIR
(`tasklane worker` prepares it), and this one endpoint per pod reads every child's files, so
a scrape sees the whole pod however many children come and go. Without the variable (a plain
`celery worker` started by hand) it serves the main process's registry only, which misses the
children's counts: the log says so.

TASKLANE_WORKER_METRICS_PORT picks the port (default 9464; 0 turns the endpoint off) and
TASKLANE_WORKER_METRICS_HOST the address.
"""

from __future__ import annotations

import logging
from threading import Thread
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from celery import bootsteps

from app.core.metrics_dir import multiprocess_dir
from app.core.metrics_exposition import start_metrics_server

if TYPE_CHECKING:
    from celery.worker import WorkController

log = logging.getLogger("tasklane.metrics")


class MetricsEndpoint(bootsteps.StartStopStep):
    """Worker bootstep: an HTTP /metrics server for the worker's lifetime."""

    label = "tasklane metrics endpoint"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: WorkController, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self.server: tuple[WSGIServer, Thread] | None = None

    def start(self, parent: WorkController) -> None:
        settings = parent.app.tasklane_settings
        port = settings.worker_metrics_port
        if port == 0:
            return
        folder = multiprocess_dir()
        if folder is None and parent.pool_cls.__module__.endswith("prefork"):
            log.warning(
                "PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows this main process only, "
                "not its pool children's tasks; start workers with `tasklane worker`"
            )
        self.server = start_metrics_server(settings.worker_metrics_host, port)
        if self.server is not None:
            log.info(
                "worker metrics on http://%s:%s/metrics",
                settings.worker_metrics_host,
                self.server[0].server_port,
            )

    def stop(self, parent: WorkController) -> None:
        if self.server is not None:
            server, thread = self.server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self.server = None
