"""HybridExecutor's routing rules of DESIGN.md §3, in order, through TaskManager.submit, on a real
redis-server: worker heartbeats are written the way workers write them, Celery messages land in
the real queue lists, and the metrics are read back from prometheus_client's registry."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import redis
from celery import Celery
from prometheus_client import REGISTRY

from app.core.tasks import ExecutorUnavailable, TaskManager, TaskStatus
from app.core.tasks.broker_layout import BROKER_LAYOUT
from app.core.tasks.errors import BrokerUnavailable
from app.core.tasks.execution import execute
from app.core.tasks.executors.background import BackgroundTasksExecutor
from app.core.tasks.executors.celery import CeleryExecutor
from app.core.tasks.executors.hybrid import HybridExecutor
from app.core.tasks.hooks import TaskHooks
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.presence import WorkerKeys
from app.core.tasks.queues import QueueRouting
from app.core.tasks.registry import TaskRegistry, task
from app.core.tasks.store.redis import RedisStore
from scripts.harness.processes import free_port, run_python
from scripts.harness.scaled_api import make_celery

PREFIX = "test:"
KEYS = WorkerKeys(PREFIX)
HEARTBEAT = 5.0

REGISTRY_ = TaskRegistry()
RUNS: list[str] = []
RELEASE = threading.Event()


def _run(label: str) -> str:
    RUNS.append(label)
    return label


def _block() -> str:
    RELEASE.wait(10)
    return "released"


task("hr_heavy", weight="heavy", idempotent=True, target=REGISTRY_)(_run)
task("hr_heavy_once", weight="heavy", target=REGISTRY_)(_run)  # not idempotent
task("hr_heavy_strict", weight="heavy", fallback=False, idempotent=True, target=REGISTRY_)(_run)
task("hr_listed", idempotent=True, target=REGISTRY_)(_run)  # light by weight, in HEAVY_TASKS
task("hr_light", target=REGISTRY_)(_run)
task("hr_light_block", target=REGISTRY_)(_block)
task("hr_spec_pinned", executor="celery", target=REGISTRY_)(_run)


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    RUNS.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def fallbacks(task_name: str, reason: str) -> float:
    return sample("tasklane_executor_fallbacks_total", task=task_name, reason=reason)


def decisions(task_name: str, executor: str) -> float:
    return sample("tasklane_routing_decisions_total", task=task_name, executor=executor)


@dataclass
class Plane:
    manager: TaskManager
    hybrid: HybridExecutor
    monitor: WorkerMonitor
    store: RedisStore
    redis: redis.Redis

    def beat(self, hostname: str = "w1", queues: str = "light,heavy") -> None:
        """A live worker's heartbeat (what app.core.tasks.presence writes)."""
        self.redis.zadd(KEYS.workers, {hostname: time.time()})
        self.redis.hset(KEYS.worker(hostname), mapping={"queues": queues, "concurrency": 2})

    def kill(self, hostname: str = "w1") -> None:
        """The worker stops beating: its last heartbeat is older than the liveness window."""
        self.redis.zadd(KEYS.workers, {hostname: time.time() - 10 * HEARTBEAT})

    async def see(self) -> None:
        await self.monitor.refresh()


@pytest_asyncio.fixture
async def planes(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Builds hybrid executors on the session's redis-server; stops them all afterwards."""
    built: list[Plane] = []
    apps: list[Celery] = []

    async def build(
        *,
        broker_url: str | None = None,
        monitored_broker_url: str | None = None,
        routes: dict[str, str] | None = None,
        scale_from_zero: bool = False,
        concurrency: int = 4,
        dispatch_deadline: float = 60.0,
    ) -> Plane:
        store = RedisStore(redis_url, prefix=PREFIX)
        celery_app = make_celery(broker_url or redis_url)
        apps.append(celery_app)
        queues = QueueRouting(heavy_tasks=frozenset({"hr_listed"}))
        monitor = WorkerMonitor(
            redis_url,
            prefix=PREFIX,
            heartbeat_interval=HEARTBEAT,
            interval=60,  # refreshed by the test (Plane.see), never by a timer
            scale_from_zero=scale_from_zero,
            queues=queues.queues(REGISTRY_),
            broker_url=monitored_broker_url,
        )
        hooks = TaskHooks()
        background = BackgroundTasksExecutor(
            store, registry=REGISTRY_, hooks=hooks, concurrency=concurrency
        )
        celery = CeleryExecutor(
            celery_app,
            store,
            publish_timeout=0.5,
            hooks=hooks,
            queues=queues,
            registry=REGISTRY_,
        )
        hybrid = HybridExecutor(
            background,
            celery,
            monitor,
            store=store,
            queues=queues,
            routes=routes,
            registry=REGISTRY_,
            hooks=hooks,
            dispatch_deadline=dispatch_deadline,
        )
        manager = TaskManager(store=store, executor=hybrid, registry=REGISTRY_, hooks=hooks)
        plane = Plane(
            manager, hybrid, monitor, store, redis.Redis.from_url(redis_url, decode_responses=True)
        )
        built.append(plane)
        await monitor.refresh()
        return plane

    yield build
    RELEASE.set()
    for plane in built:
        await plane.hybrid.stop(grace=1)
        await plane.store.close()
        plane.redis.close()
    for app in apps:
        app.close()


async def finished(plane: Plane, task_id: str) -> Any:
    return await plane.manager.wait(task_id, timeout=10)


# -- rule 1: a pin wins ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_configured_pin_wins_over_every_rule(planes: Callable[..., Any]) -> None:
    plane = await planes(routes={"hr_heavy": "background", "hr_light": "celery"})
    plane.beat()
    await plane.see()
    before = decisions("hr_heavy", "background"), decisions("hr_light", "celery")

    heavy_id = await plane.manager.submit("hr_heavy", "h")
    light_id = await plane.manager.submit("hr_light", "l")

    assert (await plane.store.get(heavy_id)).executor == "background"
    assert (await plane.store.get(light_id)).executor == "celery"
    assert (decisions("hr_heavy", "background"), decisions("hr_light", "celery")) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert (await finished(plane, heavy_id)).status is TaskStatus.SUCCESS


@pytest.mark.asyncio
async def test_pin_to_celery_holds_even_with_no_worker(planes: Callable[..., Any]) -> None:
    plane = await planes()
    before = fallbacks("hr_spec_pinned", "no_workers")

    task_id = await plane.manager.submit("hr_spec_pinned", "p")

    record = await plane.store.get(task_id)
    assert (record.executor, record.status) == ("celery", TaskStatus.PENDING)
    assert BROKER_LAYOUT.waiting(plane.redis, "light") == 1
    assert fallbacks("hr_spec_pinned", "no_workers") == before


# -- rule 2: heavy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hr_heavy", "hr_listed"])
@pytest.mark.asyncio
async def test_heavy_goes_to_celery_when_a_live_worker_consumes_its_queue(
    planes: Callable[..., Any], name: str
) -> None:
    plane = await planes()
    plane.beat(queues="heavy")
    await plane.see()
    before = decisions(name, "celery")

    task_id = await plane.manager.submit(name, "x")

    record = await plane.store.get(task_id)
    assert (record.executor, record.status) == ("celery", TaskStatus.PENDING)
    # The record names the queue the message really went to, even for a light task listed
    # in HEAVY_TASKS.
    assert record.queue == "heavy"
    assert BROKER_LAYOUT.waiting(plane.redis, "heavy") == 1
    assert decisions(name, "celery") == before + 1
    assert RUNS == []


@pytest.mark.asyncio
async def test_heavy_runs_locally_with_no_live_worker_counted_as_no_workers(
    planes: Callable[..., Any],
) -> None:
    plane = await planes()
    plane.beat(queues="light")  # alive, but not for the heavy queue
    await plane.see()
    before = fallbacks("hr_heavy", "no_workers"), decisions("hr_heavy", "background")

    task_id = await plane.manager.submit("hr_heavy", "local")

    record = await finished(plane, task_id)
    assert (record.executor, record.status, RUNS) == ("background", TaskStatus.SUCCESS, ["local"])
    assert fallbacks("hr_heavy", "no_workers") == before[0] + 1
    assert decisions("hr_heavy", "background") == before[1] + 1
    assert BROKER_LAYOUT.waiting(plane.redis, "heavy") == 0


@pytest.mark.asyncio
async def test_dead_worker_means_local_again(planes: Callable[..., Any]) -> None:
    plane = await planes()
    plane.beat()
    await plane.see()
    assert plane.hybrid.route_preview(REGISTRY_.get("hr_heavy")).executor == "celery"

    plane.kill()
    await plane.see()

    assert plane.hybrid.route_preview(REGISTRY_.get("hr_heavy")).executor == "background"


@pytest.mark.asyncio
async def test_scale_from_zero_queues_heavy_tasks_with_no_worker(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(scale_from_zero=True)
    before = fallbacks("hr_heavy", "no_workers")

    ids = [await plane.manager.submit("hr_heavy", str(i)) for i in range(3)]

    records = [await plane.store.get(task_id) for task_id in ids]
    assert {(r.executor, r.status) for r in records} == {("celery", TaskStatus.PENDING)}
    assert BROKER_LAYOUT.waiting(plane.redis, "heavy") == 3
    assert fallbacks("hr_heavy", "no_workers") == before


@pytest.mark.asyncio
async def test_heavy_with_fallback_false_and_no_worker_is_refused_with_retry_after(
    planes: Callable[..., Any],
) -> None:
    plane = await planes()

    with pytest.raises(ExecutorUnavailable) as caught:
        await plane.manager.submit("hr_heavy_strict", "x")

    assert caught.value.http_status == 503
    assert caught.value.retry_after >= 1
    assert await plane.manager.list(name="hr_heavy_strict") == []  # nothing was recorded
    assert plane.hybrid.route_preview(REGISTRY_.get("hr_heavy_strict")).executor == "unavailable"


# -- rule 3: light ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_light_runs_locally_even_with_live_workers(planes: Callable[..., Any]) -> None:
    plane = await planes()
    plane.beat()
    await plane.see()
    before = decisions("hr_light", "background")

    task_id = await plane.manager.submit("hr_light", "l")

    record = await finished(plane, task_id)
    assert (record.executor, record.status) == ("background", TaskStatus.SUCCESS)
    assert decisions("hr_light", "background") == before + 1


@pytest.mark.asyncio
async def test_light_overflows_to_celery_when_the_runner_is_saturated(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(concurrency=1)
    plane.beat(queues="light")
    await plane.see()
    blocker = await plane.manager.submit("hr_light_block")
    assert plane.hybrid.background.saturated
    before = fallbacks("hr_light", "saturated"), decisions("hr_light", "celery")

    task_id = await plane.manager.submit("hr_light", "overflow")

    assert (await plane.store.get(task_id)).executor == "celery"
    assert BROKER_LAYOUT.waiting(plane.redis, "light") == 1
    assert fallbacks("hr_light", "saturated") == before[0] + 1
    assert decisions("hr_light", "celery") == before[1] + 1
    RELEASE.set()
    assert (await finished(plane, blocker)).status is TaskStatus.SUCCESS


@pytest.mark.asyncio
async def test_saturated_runner_keeps_light_tasks_when_celery_cannot_serve(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(concurrency=1)
    await plane.manager.submit("hr_light_block")
    before = fallbacks("hr_light", "saturated")

    task_id = await plane.manager.submit("hr_light", "waits-here")

    assert (await plane.store.get(task_id)).executor == "background"
    assert fallbacks("hr_light", "saturated") == before
    RELEASE.set()
    assert (await finished(plane, task_id)).status is TaskStatus.SUCCESS


# -- rule 4: publish failure -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_publish_failure_runs_the_task_locally_counted_as_broker_down(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    plane.beat()  # the monitor sees a live worker; the broker itself is unreachable
    await plane.see()
    before = fallbacks("hr_heavy", "broker_down"), decisions("hr_heavy", "celery")

    task_id = await plane.manager.submit("hr_heavy", "rescued")

    record = await finished(plane, task_id)
    assert (record.executor, record.status, RUNS) == ("background", TaskStatus.SUCCESS, ["rescued"])
    assert fallbacks("hr_heavy", "broker_down") == before[0] + 1
    assert decisions("hr_heavy", "celery") == before[1] + 1  # the decision, before the failure


@pytest.mark.asyncio
async def test_broker_known_down_routes_heavy_locally_without_trying_to_publish(
    planes: Callable[..., Any],
) -> None:
    # The monitor reads the queue lists from a broker nobody listens on (the Celery app used
    # for publishing still works: it must never be asked).
    plane = await planes(monitored_broker_url=f"redis://127.0.0.1:{free_port()}/0")
    plane.beat()
    await plane.see()
    assert not plane.monitor.broker_up
    before = fallbacks("hr_heavy", "broker_down"), decisions("hr_heavy", "background")

    task_id = await plane.manager.submit("hr_heavy", "at-once")

    record = await finished(plane, task_id)
    assert (record.executor, record.status) == ("background", TaskStatus.SUCCESS)
    assert fallbacks("hr_heavy", "broker_down") == before[0] + 1
    assert decisions("hr_heavy", "background") == before[1] + 1
    assert (
        BROKER_LAYOUT.waiting(plane.redis, "heavy") == 0
    )  # the (working) Celery app was never asked
    with pytest.raises(ExecutorUnavailable, match="broker is unreachable"):
        await plane.manager.submit("hr_heavy_strict", "x")


@pytest.mark.parametrize(
    ("name", "routes"),
    [("hr_heavy_strict", None), ("hr_heavy", {"hr_heavy": "celery"})],
    ids=["fallback-false", "pinned-to-celery"],
)
@pytest.mark.asyncio
async def test_publish_failure_of_a_task_that_may_not_run_here_is_a_503(
    planes: Callable[..., Any], name: str, routes: dict[str, str] | None
) -> None:
    plane = await planes(broker_url=f"redis://127.0.0.1:{free_port()}/0", routes=routes)
    plane.beat()
    await plane.see()

    with pytest.raises(BrokerUnavailable):
        await plane.manager.submit(name, "x")

    [record] = await plane.manager.list(name=name)
    assert record.status is TaskStatus.FAILURE  # settled, never left PENDING
    assert RUNS == []


# -- dispatch deadline -----------------------------------------------------------------------------


async def _sent_then_pool_dies(plane: Plane, name: str) -> str:
    plane.beat()
    await plane.see()
    task_id = await plane.manager.submit(name, "late")
    assert (await plane.store.get(task_id)).executor == "celery"
    plane.kill()
    await plane.see()
    await asyncio.sleep(plane.hybrid.deadline.deadline + 0.05)
    return task_id


@pytest.mark.asyncio
async def test_deadline_takes_an_idempotent_task_back_exactly_once(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(dispatch_deadline=0.2)
    task_id = await _sent_then_pool_dies(plane, "hr_heavy")
    before = fallbacks("hr_heavy", "deadline")

    taken = await asyncio.gather(*(plane.hybrid.check_deadlines() for _ in range(3)))
    taken_again = await plane.hybrid.check_deadlines()

    assert sum(taken) + taken_again == 1
    record = await finished(plane, task_id)
    assert (record.executor, record.status, RUNS) == ("background", TaskStatus.SUCCESS, ["late"])
    assert fallbacks("hr_heavy", "deadline") == before + 1
    # The worker's copy of the message arrives at last: execute() refuses it.
    late = await execute(
        task_id, registry=REGISTRY_, store=plane.store, executor="celery", hooks=TaskHooks()
    )
    assert not late.ran
    assert RUNS == ["late"]


@pytest.mark.asyncio
async def test_deadline_reports_but_keeps_a_non_idempotent_task_queued(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(dispatch_deadline=0.2)
    task_id = await _sent_then_pool_dies(plane, "hr_heavy_once")
    before = fallbacks("hr_heavy_once", "deadline")

    assert await plane.hybrid.check_deadlines() == 0
    assert await plane.hybrid.check_deadlines() == 0

    record = await plane.store.get(task_id)
    assert (record.executor, record.status) == ("celery", TaskStatus.PENDING)
    assert fallbacks("hr_heavy_once", "deadline") == before + 1  # reported once
    assert RUNS == []


@pytest.mark.asyncio
async def test_deadline_leaves_tasks_alone_while_a_worker_is_live(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(dispatch_deadline=0.2)
    plane.beat()
    await plane.see()
    task_id = await plane.manager.submit("hr_heavy", "backlogged")
    await asyncio.sleep(0.25)

    assert await plane.hybrid.check_deadlines() == 0

    assert (await plane.store.get(task_id)).executor == "celery"
    assert RUNS == []


@pytest.mark.asyncio
async def test_deadline_never_takes_a_task_a_worker_already_started(
    planes: Callable[..., Any],
) -> None:
    plane = await planes(dispatch_deadline=0.2)
    task_id = await _sent_then_pool_dies(plane, "hr_heavy")
    await plane.store.update(task_id, lambda r: r.replace(status=TaskStatus.STARTED))

    assert await plane.hybrid.check_deadlines() == 0

    record = await plane.store.get(task_id)
    assert (record.executor, record.status) == ("celery", TaskStatus.STARTED)


@pytest.mark.asyncio
async def test_deadline_checker_runs_on_its_own_once_started(planes: Callable[..., Any]) -> None:
    plane = await planes(dispatch_deadline=0.2)
    plane.hybrid.deadline.interval = 0.05
    task_id = await _sent_then_pool_dies(plane, "hr_heavy")
    await plane.hybrid.start()

    record = await finished(plane, task_id)

    assert (record.executor, record.status) == ("background", TaskStatus.SUCCESS)


# -- the rest of the executor ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_route_preview_counts_nothing(planes: Callable[..., Any]) -> None:
    plane = await planes()
    spec = REGISTRY_.get("hr_heavy")
    before = decisions("hr_heavy", "background"), fallbacks("hr_heavy", "no_workers")

    for _ in range(5):
        assert plane.hybrid.route_preview(spec).executor == "background"

    assert (decisions("hr_heavy", "background"), fallbacks("hr_heavy", "no_workers")) == before


@pytest.mark.asyncio
async def test_a_submit_to_celery_looks_its_task_up_once(
    planes: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manager resolves the spec; plan, publish and dispatch deadline reuse it or the
    record (issue 12), where each used to look it up again (the publisher thread still reads
    the spec's redaction for send_task's argsrepr)."""
    plane = await planes(scale_from_zero=True)
    seen: list[str] = []
    get = REGISTRY_.get
    monkeypatch.setattr(REGISTRY_, "get", lambda name: seen.append(name) or get(name))

    task_id = await plane.manager.submit("hr_heavy", "x")

    assert seen == ["hr_heavy", "hr_heavy"]
    assert (await plane.store.get(task_id)).queue == "heavy"
    assert BROKER_LAYOUT.waiting(plane.redis, "heavy") == 1
    assert len(plane.hybrid.deadline) == 1


@pytest.mark.asyncio
async def test_cancel_goes_to_the_executor_named_in_the_record(planes: Callable[..., Any]) -> None:
    plane = await planes(scale_from_zero=True)
    queued = await plane.manager.submit("hr_heavy", "never")
    blocker = await plane.manager.submit("hr_light_block")
    await asyncio.sleep(0.05)

    assert await plane.manager.cancel(queued)
    assert await plane.manager.cancel(blocker)

    assert (await plane.store.get(queued)).status is TaskStatus.CANCELLED
    RELEASE.set()
    assert (await finished(plane, blocker)).status in (TaskStatus.CANCELLED, TaskStatus.SUCCESS)
    assert await plane.hybrid.check_deadlines() == 0


@pytest.mark.asyncio
async def test_describe_shows_workers_queues_and_both_planes(planes: Callable[..., Any]) -> None:
    plane = await planes()
    plane.beat(queues="heavy")
    plane.redis.rpush("heavy", "m1", "m2")
    await plane.see()

    info = plane.hybrid.describe()

    assert info["name"] == "hybrid"
    assert info["accepting"] is True
    assert info["broker_up"] is True
    assert info["workers"]["heavy"] == 1
    assert info["workers"]["light"] == 0
    assert info["queue_lengths"]["heavy"] == 2
    assert info["background"]["name"] == "background"
    assert info["celery"]["name"] == "celery"
    assert info["heavy_tasks"] == ["hr_listed"]


def test_unknown_pin_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown executor"):
        HybridExecutor(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            WorkerMonitor("redis://127.0.0.1:1/0"),
            store=None,  # type: ignore[arg-type]
            routes={"x": "kubernetes"},
        )


# -- wiring from Settings -------------------------------------------------------------------------


def test_factory_builds_the_hybrid_from_settings(redis_url: str) -> None:
    from app.config import Settings
    from app.wiring import build_task_manager

    settings = Settings(
        executor="hybrid",
        store="redis",
        redis_url=redis_url,
        celery_broker_url=redis_url,
        heavy_queue="gpu",
        heavy_tasks="hr_listed",
        routes="hr_light=celery",
        scale_from_zero=True,
        monitor_interval=0.5,
        dispatch_deadline=12,
    )

    manager = build_task_manager(settings, registry=REGISTRY_)

    hybrid = manager.executor
    assert isinstance(hybrid, HybridExecutor)
    assert hybrid.celery.celery_app.conf.broker_url == redis_url
    assert hybrid.monitor.redis_url == redis_url
    assert hybrid.monitor.scale_from_zero
    assert hybrid.monitor.interval == 0.5
    assert {"gpu", "light"} <= hybrid.monitor.watched
    assert hybrid.queues.queue_for(REGISTRY_.get("hr_listed")) == "gpu"
    assert hybrid.routes == {"hr_light": "celery"}
    assert hybrid.deadline.deadline == 12


def test_factory_builds_celery_alone_when_asked(redis_url: str) -> None:
    from app.config import Settings
    from app.wiring import build_task_manager

    settings = Settings(
        executor="celery", store="redis", redis_url=redis_url, celery_broker_url=redis_url
    )

    manager = build_task_manager(settings, registry=REGISTRY_)

    assert isinstance(manager.executor, CeleryExecutor)
    assert manager.executor.route_preview(REGISTRY_.get("hr_light")).executor == "celery"


def test_the_api_builds_one_celery_app_from_the_settings_it_is_given() -> None:

    # A fresh interpreter: the only Celery apps alive are the ones building the manager made.
    code = (
        "import gc, sys\n"
        "from app.config import Settings\n"
        "from app.wiring import build_task_manager\n"
        "from app.workers.celery_config import TasklaneCelery\n"
        "url = 'redis://127.0.0.1:1/0'\n"
        "settings = Settings(executor='hybrid', store='redis', redis_url=url,\n"
        "                    celery_broker_url=url, light_queue='quick')\n"
        "manager = build_task_manager(settings)\n"
        "apps = [o for o in gc.get_objects() if type(o) is TasklaneCelery]  # no proxies\n"
        "assert apps == [manager.executor.celery.celery_app], apps\n"
        "assert apps[0].conf.task_default_queue == 'quick'\n"
        "assert manager.executor.celery.owns_app  # closed with the executor\n"
        "assert 'app.workers.celery_app' not in sys.modules  # the worker's, from the env\n"
    )
    result = run_python(code)

    assert result.returncode == 0, result.stderr[-2000:]


def test_single_mode_never_imports_the_celery_app() -> None:

    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.config import Settings\n"
        "from app.main import create_app\n"
        "app = create_app(Settings(executor='background', store='memory', scheduler='off'))\n"
        "with TestClient(app) as client:\n"
        "    assert client.get('/api/tasks/executors').json()['mode'] == 'single'\n"
        "    exposed = client.get('/metrics').text\n"
        "    assert 'tasklane_tasks_submitted_total' in exposed\n"
        "    assert 'tasklane_broker_up' not in exposed  # no broker to read in single mode\n"
        "loaded = [m for m in ('app.workers.celery_app', 'celery') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = run_python(code)

    assert result.returncode == 0, result.stderr[-2000:]
