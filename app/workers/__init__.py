"""Scaled mode's Celery plane: the app (celery_app), the bound registry tasks (tasks), worker
heartbeats (heartbeat, presence) and the per-process runtime the task bodies run on.

Importing this package configures nothing; `celery -A app.workers.celery_app` does.
"""
