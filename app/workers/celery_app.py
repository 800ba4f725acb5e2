"""The Celery application of scaled mode, as the migration guide runs it:

    celery -A app.workers.celery_app worker      # or: tasklane worker
    celery -A app.workers.celery_app beat        # or: tasklane beat
    celery -A app.workers.celery_app inspect active

`celery_app` (also `app`, which `celery -A` looks for) is built at import from the environment's
Settings (app.workers.celery_config says how), with the worker's and beat's signal handlers.
The api's executor does not use it: the composition root (app.wiring) builds its own.

CELERY_BROKER_URL: importing this module never fails for want of it (legacy code imports it
through `from app.workers.tasks import ...`, and tests inspect the config), but a worker or beat
started without it exits at once naming the variable, and so does a `.delay()` call (see
app.workers.base) instead of trying Celery's amqp://localhost default.

Beat keeps its schedule state in a shelve file; pass a writable path (`tasklane beat` defaults
to <tmp>/tasklane-celerybeat-schedule) since the image's root file system is read-only.
"""

from __future__ import annotations

import logging
import warnings

from celery import signals
from celery.exceptions import CPendingDeprecationWarning

from app.config import Settings
from app.core.tasks.rate_limits import parse_overrides
from app.core.tasks.registry import autodiscover, registry
from app.logs import configure_logging
from app.tasks.data import configure_domain_data
from app.workers.celery_config import create_celery_app

settings = Settings()
autodiscover(settings.task_modules)
celery_app = create_celery_app(settings)
#: `celery -A app.workers.celery_app` looks for `app` (or `celery`) in the module.
app = celery_app


def require_broker(settings: Settings, role: str) -> None:
    """Exit with a message naming the variable when `role` (worker, beat) cannot work."""
    if not settings.celery_broker_url:
        raise SystemExit(
            f"tasklane {role}: CELERY_BROKER_URL is not set (e.g. redis://redis:6379/0); "
            "Celery workers and beat need the broker the api publishes to"
        )
    try:
        settings.check()
        parse_overrides(settings.rate_limits, registry)
    except ValueError as exc:
        raise SystemExit(f"tasklane {role}: {exc}") from None


# SystemExit, not an ordinary exception: Celery logs and swallows exceptions from signal
# handlers, and a worker without its broker would otherwise retry amqp://localhost forever.
@signals.worker_process_init.connect
def _configure_domain_data(**_: object) -> None:
    """A pool child (or the solo pool's only process) starts: the domain data the example
    tasks use, as the api's lifespan configures it (connected before runtime.py's handler,
    which builds the child's runtime, as the two ran before)."""
    configure_domain_data(settings)


@signals.worker_init.connect
def _check_worker(**_: object) -> None:
    require_broker(settings, "worker")


@signals.beat_init.connect
def _check_beat(**_: object) -> None:
    require_broker(settings, "beat")


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    """Our formatter (text or JSON, TASKLANE_LOG_FORMAT) instead of Celery's, at the command
    line's --loglevel (pool children get it through CELERY_LOG_LEVEL)."""
    if not loglevel:
        level = settings.log_level
    elif isinstance(loglevel, int):
        level = logging.getLevelName(loglevel)
    else:
        level = loglevel
    configure_logging(settings.log_format, level)


@signals.celeryd_after_setup.connect
def _quiet_reconnect_warning(**_: object) -> None:
    # Celery warns on every reconnect that worker_cancel_long_running_tasks_on_connection_loss
    # will default to True in 6.0; we set it on purpose. Added after Celery's logging set-up,
    # which puts its own "always show" filter first.
    warnings.filterwarnings(
        "ignore", message=r"\s*In Celery 5\.1 we introduced", category=CPendingDeprecationWarning
    )
