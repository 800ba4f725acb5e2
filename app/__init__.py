"""tasklane: one TaskManager API for FastAPI background work, in-process or on Celery."""

__version__ = "0.1.0"
