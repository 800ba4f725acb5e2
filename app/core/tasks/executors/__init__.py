"""Executors: where a recorded task actually runs (in-process, Celery, or routed per task)."""
