"""Shared fixtures: a real redis-server for the session, stores of both kinds, a clean
process-wide TaskManager around every test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from app.core.tasks import set_task_manager, set_task_manager_builder
from app.core.tasks.store import ResultStore
from app.core.tasks.store.memory import MemoryStore
from app.core.tasks.store.redis import RedisStore
from scripts.harness.processes import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server per test session on a free loopback port."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, emptied before the test (restarted if a test
    stopped it)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest_asyncio.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ResultStore]:
    """Each test using it runs twice: on the memory store and on a real Redis."""
    if request.param == "memory":
        backend: ResultStore = MemoryStore(result_ttl=3600, max_records=1000)
    else:
        url = request.getfixturevalue("redis_url")
        backend = RedisStore(url, prefix="test:", result_ttl=3600, recent_max=1000)
    yield backend
    await backend.close()


@pytest.fixture(autouse=True)
def _fresh_task_manager() -> Iterator[None]:
    """get_task_manager() builds a new manager per test (its loop dies with the test), from
    the environment as the test left it, by the default builder (the installed entry point, as
    in a user's own tests)."""
    set_task_manager(None)
    set_task_manager_builder(None)
    yield
    set_task_manager(None)
    set_task_manager_builder(None)


@pytest.fixture(autouse=True)
def _restore_metrics_dir_variable() -> Iterator[None]:
    """`tasklane serve|worker` set PROMETHEUS_MULTIPROC_DIR in their own process, which under
    a CLI unit test is pytest's: put it back so no later test or child process inherits it."""
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    yield
    if before is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
