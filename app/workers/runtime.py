"""Per-process state of a Celery process: one event loop thread, the store, hooks, Redis.

execute() and the stores are async; Celery calls task bodies synchronously. Each process gets
one event loop on a daemon thread and submits coroutines to it (run()). Celery's prefork pool
forks its children from a main process that has imported everything: a child inherits objects
but no threads, and sockets it must not share, so a runtime belongs to the process that built it
(get_runtime() rebuilds after a fork) and worker_process_init builds each child's eagerly.
Whatever else a child needs (the example tasks' domain data) connects to the same signal where
the worker is composed (app/workers/celery_app.py): this module knows no domain package.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis
from celery import signals

from app.config import Settings
from app.core.redis_client import LoopLocalRedis, PoolLimits
from app.core.tasks.hooks import TaskHooks, default_hooks
from app.core.tasks.presence import WorkerKeys
from app.core.tasks.queues import QueueRouting
from app.core.tasks.rate_limits import RateLimits, rate_limits_for
from app.core.tasks.registry import TaskRegistry
from app.core.tasks.registry import registry as default_registry
from app.core.tasks.store import ResultStore, create_store
from app.workers.celery_app import settings as app_settings

T = TypeVar("T")


class Runtime:
    """Everything one process needs to run task attempts and keep the worker keys."""

    def __init__(self, settings: Settings, *, registry: TaskRegistry = default_registry) -> None:
        self.settings = settings
        self.registry = registry
        self.store: ResultStore = create_store(settings)
        #: The same limits as the api's, on the same Redis (the worker's start checked them).
        self.rate_limits: RateLimits = rate_limits_for(self.store, registry, settings.rate_limits)
        self.hooks: TaskHooks = default_hooks()
        self.keys = WorkerKeys(settings.key_prefix)
        #: Built once: a message without a routing key falls back to its task's queue here.
        self.queues = QueueRouting.from_settings(settings)
        url = settings.store_redis_url
        #: Sync client for the worker keys; None when there is no Redis (no bookkeeping).
        self.redis: redis.Redis | None = (
            redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=30,
            )
            if url
            else None
        )
        #: The same Redis for coroutines on this runtime's loop: the active-set bookkeeping
        #: around each task, so a delivery needs no hop off the loop.
        self.async_redis: LoopLocalRedis | None = (
            LoopLocalRedis(url, limits=PoolLimits.from_settings(settings)) if url else None
        )
        self.pid = os.getpid()
        self.loop = new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name="tasklane-worker-loop", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def on_loop_thread(self) -> bool:
        """Is the caller running on this runtime's event loop (where run() would deadlock)?"""
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run coro on the loop thread and block until it returns (or raises)."""
        if self.on_loop_thread():
            coro.close()
            raise RuntimeError("Runtime.run() called from its own loop thread would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (uvicorn[standard] brings it), else asyncio's.

    Every task a worker runs costs three Redis round trips on this loop; uvloop's socket and
    wake-up handling takes about a quarter less CPU per command than the default loop's.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio is the fallback
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_lock = threading.Lock()
_runtime: Runtime | None = None
#: Runtimes a forked child inherited. Kept referenced on purpose: collecting one would close
#: its asyncio transports, and an inherited epoll registration or socket is shared with the
#: parent, whose own runtime would stop hearing from Redis.
_inherited: list[Runtime] = []


def get_runtime() -> Runtime:
    """This process's runtime, built on first use (and again in a forked child)."""
    global _runtime
    with _lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Runtime(app_settings)
        return _runtime


def _forget_after_fork() -> None:
    # The parent's loop thread does not exist here, and its lock may be held mid-call.
    global _runtime, _lock
    if _runtime is not None:
        _inherited.append(_runtime)
    _runtime = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


@signals.worker_process_init.connect
def _init_pool_process(**_: object) -> None:
    """A pool child (or the solo pool's only process) starts: its runtime."""
    get_runtime()
