"""Fixtures shared by the integration tests of real Celery workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.config import Settings
from app.workers.celery_config import TasklaneCelery, create_celery_app
from tests.support.records import Records


@pytest.fixture
def records(redis_url: str) -> Iterator[Records]:
    records = Records(redis_url)
    yield records
    records.client.close()


@pytest.fixture
def sender(redis_url: str) -> Iterator[TasklaneCelery]:
    """A Celery app like the api's: publishes by name to the test's Redis."""
    app = create_celery_app(Settings(celery_broker_url=redis_url, redis_url=redis_url))
    yield app
    app.close()
