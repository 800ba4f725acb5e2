"""The api follows the worker Deployment and its KEDA ScaledObject (app/core/kubernetes/watch.py)
and the WorkerMonitor routes by it.

No cluster exists on these machines: tests.support.kube_api.FakeKubeApi stands in for the
Kubernetes API server (real HTTP on 127.0.0.1, list + chunked watch streams with
resourceVersions, 403/404/410/500 on demand, streams it can cut). The kubernetes client talks to
it through a Configuration(host=...) or a kubeconfig, exactly as it would to a cluster. Worker
heartbeats are real keys in a real redis-server, written by the worker's own code
(app.core.tasks.presence.write_heartbeat) under pod-style hostnames, as the chart's workers
(`celery@<pod>`) write them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from kubernetes.client import ApiClient
from prometheus_client import REGISTRY

from app.config import Settings
from app.core.kubernetes.scaling import COMPONENT_LABEL, POOL_LABEL, release_worker_selector
from app.core.kubernetes.state import PAUSED_REPLICAS
from app.core.kubernetes.watch import KubeWatcher
from app.core.tasks import TaskManager
from app.core.tasks.monitor import WorkerMonitor
from app.core.tasks.presence import WorkerInfo, WorkerKeys, write_heartbeat
from app.core.tasks.registry import TaskRegistry, task
from app.wiring import build_task_manager
from scripts.harness.processes import free_port
from tests.chart.helpers import CI_VALUES_DIR, container, env_map, render_chart
from tests.support.kube_api import DEPLOYMENTS, HANG_UP, SCALED_OBJECTS, FakeKubeApi

DEP = "demo-tasklane-worker"
PREFIX = "kubetest:"
KEYS = WorkerKeys(PREFIX)
HEARTBEAT = 5.0  # a heartbeat stays fresh for 15 s: long past every flip these tests time

REGISTRY_ = TaskRegistry()
task("kube_heavy", weight="heavy", target=REGISTRY_)(lambda: "ran")
task("kube_light", target=REGISTRY_)(lambda: "ran")


def pod(deployment: str = DEP) -> str:
    """A worker node name as a pod of `deployment` announces itself (celery@%h)."""
    return f"celery@{deployment}-7d9c5b8f4-{uuid.uuid4().hex[:5]}"


def beat(client: redis.Redis, hostname: str, queues: tuple[str, ...] = ("light", "heavy")) -> None:
    info = WorkerInfo(
        hostname=hostname,
        queues=queues,
        concurrency=2,
        pid=1,
        version="test",
        started=time.time(),
    )
    write_heartbeat(client, KEYS, info, HEARTBEAT)


def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - started


async def await_until(predicate: Callable[[], bool], within: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within, "condition not met in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def replicas(watcher: KubeWatcher) -> int | None:
    """spec.replicas of the Deployment as the watcher last saw it."""
    deployment = watcher.view.deployment
    return deployment.replicas if deployment is not None else None


def fallbacks(reason: str) -> float:
    labels = {"task": "kube_heavy", "reason": reason}
    return REGISTRY.get_sample_value("tasklane_executor_fallbacks_total", labels) or 0.0


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def watchers() -> Iterator[Callable[..., KubeWatcher]]:
    """Builds started KubeWatchers with short backoffs; stops them all afterwards."""
    built: list[KubeWatcher] = []

    def build(api: FakeKubeApi | str, *, start: bool = True, **options: Any) -> KubeWatcher:
        from kubernetes.client import Configuration

        host = api if isinstance(api, str) else api.url
        configuration = Configuration(host=host)
        configuration.retries = 0
        values: dict[str, Any] = {
            "namespace": "default",
            "deployment": DEP,
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            "poll_interval": 0.1,
            "keda_recheck": 0.2,
            "request_timeout": 2.0,
            **options,
        }
        watcher = KubeWatcher(ApiClient(configuration), **values)
        built.append(watcher)
        if start:
            watcher.start()
        return watcher

    yield build
    for watcher in built:
        watcher.stop()


def make_monitor(redis_url: str, watcher: KubeWatcher, *, flag: bool = False) -> WorkerMonitor:
    return WorkerMonitor(
        redis_url,
        prefix=PREFIX,
        heartbeat_interval=HEARTBEAT,
        interval=60,  # refreshed by the test
        scale_from_zero=flag,
        queues=["light", "heavy"],
        kubernetes=watcher,
    )


@pytest_asyncio.fixture
async def manager(
    redis_url: str, kube: FakeKubeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[TaskManager]:
    """A hybrid TaskManager built by the factory from settings, the way the api builds it:
    TASKLANE_KUBERNETES=on, the kubeconfig in $KUBECONFIG pointing at the fake API."""
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = Settings(
        executor="hybrid",
        store="redis",
        redis_url=redis_url,
        celery_broker_url=redis_url,
        key_prefix=PREFIX,
        worker_heartbeat_interval=HEARTBEAT,
        monitor_interval=0.2,
        publish_timeout=1.0,
        scheduler="off",
        kubernetes="on",
        worker_deployment=DEP,
    )
    built = build_task_manager(settings, registry=REGISTRY_)
    await built.start()
    yield built
    await built.stop(0)


async def executor_of(manager: TaskManager, name: str) -> str:
    record = await manager.get_result(await manager.submit(name))
    assert record is not None
    return record.executor


# -- routing ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_kubectl_scale_to_zero_sends_heavy_tasks_local_within_a_second(
    manager: TaskManager, kube: FakeKubeApi, client: redis.Redis
) -> None:
    workers = [pod(), pod()]
    for hostname in workers:
        beat(client, hostname)
    kube.add_deployment(DEP, replicas=2)
    monitor: WorkerMonitor = manager.executor.monitor  # type: ignore[attr-defined]
    assert monitor.kubernetes is not None
    await await_until(lambda: monitor.kubernetes.view.deployment_known)  # type: ignore[union-attr]
    await monitor.refresh()
    assert await executor_of(manager, "kube_heavy") == "celery"
    no_workers = fallbacks("no_workers")

    kube.scale(DEP, 0)  # kubectl scale deployment/demo-tasklane-worker --replicas=0
    elapsed = await await_until(lambda: not monitor.can_serve("heavy"), within=1.0)

    assert elapsed < 1.0
    # Both heartbeats are still fresh: only Kubernetes could say the pool is going away.
    assert monitor.snapshot.live_workers("heavy", time.time()) == 2
    assert all(time.time() - client.zscore(KEYS.workers, h) < 3 * HEARTBEAT for h in workers)
    assert monitor.live_workers("heavy") == 0
    assert await executor_of(manager, "kube_heavy") == "background"
    assert fallbacks("no_workers") == no_workers + 1
    described = manager.executor.describe()
    assert described["kubernetes"]["held_at_zero"] is True
    assert described["kubernetes"]["deployment"]["replicas"] == 0

    kube.scale(DEP, 2)
    await await_until(lambda: monitor.can_serve("heavy"), within=1.0)
    assert await executor_of(manager, "kube_heavy") == "celery"


@pytest.mark.asyncio
async def test_a_worker_outside_the_deployment_still_serves_while_it_is_held_at_zero(
    redis_url: str, kube: FakeKubeApi, client: redis.Redis, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=0)
    beat(client, pod())
    monitor = make_monitor(redis_url, watchers(kube))
    await monitor.refresh()
    await await_until(lambda: monitor.held_at_zero())
    assert not monitor.can_serve("heavy")

    beat(client, pod("demo-tasklane-audio-worker"), queues=("heavy",))
    await monitor.refresh()

    assert monitor.can_serve("heavy")
    assert monitor.live_workers("heavy") == 1
    assert not monitor.can_serve("light")
    await monitor.stop()


@pytest.mark.asyncio
async def test_replicas_without_a_live_heartbeat_serve_nothing(
    redis_url: str, kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=3)
    monitor = make_monitor(redis_url, watchers(kube), flag=False)
    await monitor.refresh()
    await await_until(lambda: monitor.kubernetes.view.scaled_object_known)  # type: ignore[union-attr]

    assert not monitor.held_at_zero()
    assert not monitor.can_serve("heavy")
    await monitor.stop()


@pytest.mark.asyncio
async def test_scaled_object_min_zero_turns_scale_from_zero_on_without_the_flag(
    redis_url: str, kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=0)
    monitor = make_monitor(redis_url, watchers(kube), flag=False)
    await monitor.refresh()
    await await_until(lambda: monitor.kubernetes.view.scaled_object_known)  # type: ignore[union-attr]
    assert not monitor.can_serve("heavy")  # no worker, no autoscaler: nothing will take it

    kube.add_scaled_object("demo-keda", target=DEP, min_replicas=0, max_replicas=8)
    await await_until(lambda: monitor.can_serve("heavy"), within=1.0)

    assert monitor.live_workers("heavy") == 0
    info = monitor.describe()
    assert info["scale_from_zero"] is True
    assert info["kubernetes"]["scale_from_zero_source"] == "kubernetes"
    assert info["kubernetes"]["scaled_object"]["name"] == "demo-keda"
    assert info["kubernetes"]["scaled_object"]["max_replicas"] == 8

    kube.patch(SCALED_OBJECTS, "demo-keda", {"spec": {"minReplicaCount": 1}})
    await await_until(lambda: not monitor.can_serve("heavy"), within=1.0)
    await monitor.stop()


@pytest.mark.asyncio
async def test_no_scaled_object_overrides_the_flag_once_kubernetes_answers(
    redis_url: str, kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=1)
    watcher = watchers(kube, start=False)  # started below: the local API answers in ms
    monitor = make_monitor(redis_url, watcher, flag=True)
    assert monitor.can_serve("heavy")  # nothing read yet: the flag answers

    watcher.start()
    await await_until(lambda: monitor.kubernetes.view.scaled_object_known)  # type: ignore[union-attr]

    assert not monitor.autoscales_from_zero()
    assert not monitor.can_serve("heavy")
    await monitor.stop()


@pytest.mark.asyncio
async def test_paused_replicas_zero_is_not_servable_even_with_fresh_heartbeats(
    redis_url: str,
    kube: FakeKubeApi,
    client: redis.Redis,
    watchers: Callable[..., KubeWatcher],
) -> None:
    kube.add_deployment(DEP, replicas=2)
    kube.add_scaled_object(DEP, min_replicas=0)
    beat(client, pod())
    monitor = make_monitor(redis_url, watchers(kube), flag=True)
    await monitor.refresh()
    await await_until(lambda: monitor.autoscales_from_zero())
    assert monitor.can_serve("heavy")

    kube.patch(SCALED_OBJECTS, DEP, {"metadata": {"annotations": {PAUSED_REPLICAS: "0"}}})
    await await_until(lambda: not monitor.can_serve("heavy"), within=1.0)

    assert monitor.held_at_zero()
    assert not monitor.autoscales_from_zero()  # paused: KEDA starts nothing, whatever min says
    kube.patch(SCALED_OBJECTS, DEP, {"metadata": {"annotations": {PAUSED_REPLICAS: "2"}}})
    await await_until(lambda: monitor.can_serve("heavy"), within=1.0)
    assert not monitor.autoscales_from_zero()  # paused at 2: heartbeats decide
    await monitor.stop()


def _release_pools(kube: FakeKubeApi) -> tuple[dict[str, str], str]:
    """Release demo of ci/scaled-pools.yaml in the stand-in API, as the chart renders it: each
    pool's Deployment (labels, tasklane.io/queues) and ScaledObject. Returns pool -> Deployment
    name, and the api's TASKLANE_WORKER_SELECTOR."""
    rendered = render_chart(values_files=(CI_VALUES_DIR / "scaled-pools.yaml",), name="demo")
    names = {}
    for obj in rendered:
        meta = obj["metadata"]
        if obj["kind"] == "Deployment" and meta["labels"][COMPONENT_LABEL] == "worker":
            kube.add_deployment(
                meta["name"], replicas=1, labels=meta["labels"], annotations=meta["annotations"]
            )
            names[meta["labels"][POOL_LABEL]] = meta["name"]
        elif obj["kind"] == "ScaledObject":
            spec = obj["spec"]
            kube.add_scaled_object(
                meta["name"],
                target=spec["scaleTargetRef"]["name"],
                min_replicas=spec["minReplicaCount"],
                max_replicas=spec["maxReplicaCount"],
            )
    api = next(
        o
        for o in rendered
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "demo-tasklane-api"
    )
    selector = env_map(container(api, "api"))["TASKLANE_WORKER_SELECTOR"]["value"]
    return names, selector


@pytest.mark.asyncio
async def test_two_pools_one_paused_at_zero_leaves_only_its_queue_unserved(
    redis_url: str, kube: FakeKubeApi, client: redis.Redis, watchers: Callable[..., KubeWatcher]
) -> None:
    pools, selector = _release_pools(kube)
    # Another release's worker and the api are never followed.
    kube.add_deployment("other-tasklane-worker", replicas=0, labels={COMPONENT_LABEL: "worker"})
    assert selector == release_worker_selector("demo")
    beat(client, pod(pools["heavy"]), queues=("heavy",))
    beat(client, pod(pools["light"]), queues=("light",))
    watcher = watchers(kube, deployment=None, selector=selector)
    monitor = make_monitor(redis_url, watcher)
    await monitor.refresh()
    await await_until(lambda: len(watcher.view.pools) == 2 and watcher.view.scaled_object_known)
    for queue in ("heavy", "light"):
        assert monitor.can_serve(queue)
        assert monitor.autoscales_from_zero(queue)

    # tasklane scale --release demo --pool heavy --replicas 0: KEDA paused at zero.
    kube.patch(
        SCALED_OBJECTS, pools["heavy"], {"metadata": {"annotations": {PAUSED_REPLICAS: "0"}}}
    )
    await await_until(lambda: not monitor.can_serve("heavy"), within=1.0)

    assert monitor.can_serve("light")
    assert monitor.live_workers("heavy") == 0  # its pod is draining, heartbeat or not
    assert monitor.live_workers("light") == 1
    assert not monitor.autoscales_from_zero("heavy")
    assert monitor.autoscales_from_zero("light")
    assert [p.deployment_name for p in watcher.view.held(False)] == [pools["heavy"]]
    described = monitor.describe()["kubernetes"]
    assert {p["deployment"]["name"]: p["queues"] for p in described["pools"]} == {
        pools["heavy"]: ["heavy"],
        pools["light"]: ["light"],
    }

    # The light pool scaled to zero by hand too (no autoscaler left on it): both unserved.
    kube.delete(SCALED_OBJECTS, pools["light"])
    kube.scale(pools["light"], 0)
    await await_until(lambda: not monitor.can_serve("light"), within=1.0)
    await monitor.stop()


# -- streams, failures, fallbacks ---------------------------------------------------------------


def test_dropped_watch_streams_reconnect_and_miss_nothing(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=2)
    watcher = watchers(kube)
    kube.wait_for_watches(2)

    kube.drop_watches()  # connections cut mid-stream, no chunked terminator
    kube.scale(DEP, 5)  # changed while nobody watches

    wait_until(lambda: replicas(watcher) == 5)
    kube.wait_for_watches(2)
    kube.scale(DEP, 1)
    wait_until(lambda: replicas(watcher) == 1, within=1.0)


def test_a_stream_the_server_ends_resumes_from_its_resource_version(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=2)
    watcher = watchers(kube)
    kube.wait_for_watches(2)
    lists_before = _lists(kube, DEPLOYMENTS)

    kube.end_watches()  # as the server's timeoutSeconds does
    kube.wait_for_watches(2)
    kube.scale(DEP, 4)

    wait_until(lambda: replicas(watcher) == 4, within=1.0)
    assert _lists(kube, DEPLOYMENTS) == lists_before  # resumed, not re-listed
    watch = [q for m, p, q in kube.requests if q.get("watch") == "true" and DEPLOYMENTS in p][-1]
    assert int(watch["resourceVersion"]) > 100


def test_too_old_resource_version_lists_again(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=2)
    watcher = watchers(kube)
    kube.wait_for_watches(2)
    lists_before = _lists(kube, DEPLOYMENTS)

    kube.scale(DEP, 3)
    wait_until(lambda: replicas(watcher) == 3)
    kube.compact()
    kube.end_watches()  # the resumed watch gets ERROR 410 Gone

    wait_until(lambda: _lists(kube, DEPLOYMENTS) > lists_before)
    kube.wait_for_watches(2)
    kube.scale(DEP, 0)
    wait_until(lambda: replicas(watcher) == 0, within=1.0)


@pytest.mark.asyncio
async def test_forbidden_falls_back_to_heartbeats_and_the_flag_logged_once(
    redis_url: str,
    kube: FakeKubeApi,
    client: redis.Redis,
    watchers: Callable[..., KubeWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tasklane.kubernetes")
    kube.add_deployment(DEP, replicas=0)
    kube.fail(403, message='deployments.apps is forbidden: User "system:serviceaccount:x:y"')
    beat(client, pod())
    monitor = make_monitor(redis_url, watchers(kube), flag=True)
    await monitor.refresh()

    await await_until(lambda: len(kube.requests) >= 8)  # several retries with backoff

    view = monitor.kubernetes.view  # type: ignore[union-attr]
    assert not view.deployment_known
    assert not view.scaled_object_known
    assert view.deployment_error is not None
    assert "forbidden (403)" in view.deployment_error
    assert monitor.can_serve("heavy")  # the heartbeat (and the flag) decide
    assert monitor.autoscales_from_zero()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "Deployment" in w and "forbidden (403)" in w]) == 1
    assert len([w for w in warnings if "ScaledObject" in w and "forbidden (403)" in w]) == 1

    kube.clear_faults()
    await await_until(lambda: monitor.held_at_zero())
    assert not monitor.can_serve("heavy")
    assert any("reading Deployment" in r.getMessage() for r in caplog.records)
    await monitor.stop()


@pytest.mark.asyncio
async def test_unreachable_api_server_falls_back_logged_once_and_recovers(
    redis_url: str,
    client: redis.Redis,
    watchers: Callable[..., KubeWatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tasklane.kubernetes")
    port = free_port()
    beat(client, pod())
    watcher = watchers(f"http://127.0.0.1:{port}")  # nothing listens: connection refused
    monitor = make_monitor(redis_url, watcher)
    await monitor.refresh()
    await await_until(lambda: watcher.updates >= 2)
    await asyncio.sleep(0.6)  # several backoff rounds

    assert watcher.view.deployment_error is not None
    assert "unreachable" in watcher.view.deployment_error
    assert monitor.can_serve("heavy")
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 2  # one per object, not one per retry

    with FakeKubeApi(port=port) as api:  # the API server comes back
        api.add_deployment(DEP, replicas=0)
        await await_until(lambda: monitor.held_at_zero(), within=5)
        assert not monitor.can_serve("heavy")
    await monitor.stop()


def test_one_hung_up_request_keeps_the_view_a_second_one_does_not(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasklane.kubernetes")
    kube.add_deployment(DEP, replicas=2)
    watcher = watchers(kube)
    kube.wait_for_watches(2)
    updates = watcher.updates

    kube.fail(HANG_UP, path=DEPLOYMENTS, times=1)  # the next request's connection just closes
    kube.drop_watches()  # so the watcher lists again, and meets the hang-up
    kube.wait_for_watches(2)

    assert watcher.view.deployment_known
    assert watcher.updates == updates  # never went unknown in between
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    kube.fail(HANG_UP, path=DEPLOYMENTS)
    kube.drop_watches()
    wait_until(lambda: not watcher.view.deployment_known)
    time.sleep(0.5)  # more failed rounds
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "cannot read Deployment" in warnings[0]
    assert "API server unreachable" in warnings[0]


def test_keda_not_installed_is_normal(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasklane.kubernetes")
    kube.keda_installed = False
    kube.add_deployment(DEP, replicas=1)
    watcher = watchers(kube, scale_from_zero_flag=True)

    wait_until(lambda: watcher.view.keda_installed is False and watcher.view.deployment_known)

    assert watcher.view.scaled_object_known
    assert watcher.view.scale_from_zero() is False
    assert watcher.view.scaled_object_error is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    described = watcher.describe()
    assert described["scaled_object"]["keda_installed"] is False
    assert described["scale_from_zero_source"] == "kubernetes"


def test_watch_forbidden_falls_back_to_polling(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasklane.kubernetes")
    kube.add_deployment(DEP, replicas=2)
    kube.fail(403, path=DEPLOYMENTS, watch=True)  # RBAC with get/list but no watch
    watcher = watchers(kube)
    wait_until(lambda: watcher.view.deployment_known)

    kube.scale(DEP, 0)

    wait_until(lambda: replicas(watcher) == 0, within=1.0)
    assert any("polling it every" in r.getMessage() for r in caplog.records)
    assert _lists(kube, DEPLOYMENTS) >= 2


def test_stop_ends_the_threads_and_closes_the_streams(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP)
    watcher = watchers(kube)
    kube.wait_for_watches(2)
    threads = list(watcher._threads)

    started = time.monotonic()
    watcher.stop()

    assert time.monotonic() - started < 2.0
    assert not any(thread.is_alive() for thread in threads)
    watcher.start()  # restartable (a monitor started again on another loop)
    kube.wait_for_watches(2)


def test_sync_once_reads_both_objects_without_threads(
    kube: FakeKubeApi, watchers: Callable[..., KubeWatcher]
) -> None:
    kube.add_deployment(DEP, replicas=0)
    kube.add_scaled_object(DEP, annotations={PAUSED_REPLICAS: "0"})
    watcher = watchers(kube, start=False)

    view = watcher.sync_once()

    assert view.deployment is not None
    assert view.deployment.replicas == 0
    assert view.held_at_zero(False)
    assert kube.open_watches() == 0


def test_the_api_shows_what_the_watcher_knows(
    redis_url: str, kube: FakeKubeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from scripts.harness.scaled_api import api, route_now, wait_for

    kube.add_deployment(DEP, replicas=2)
    kube.add_scaled_object(DEP, min_replicas=0, max_replicas=6)
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with api(redis_url, kubernetes="on", worker_deployment=DEP) as http:

        def kubernetes() -> dict[str, Any]:
            return http.get("/api/tasks/executors").json()["executors"][0]["kubernetes"]

        wait_for(lambda: kubernetes()["scaled_object"]["known"], timeout=5)
        info = kubernetes()
        assert info["deployment"]["replicas"] == 2
        assert info["scaled_object"]["max_replicas"] == 6
        assert info["scale_from_zero"] is True
        assert route_now(http, "process_speak_audio") == "celery"  # KEDA min 0: queue it

        kube.patch(SCALED_OBJECTS, DEP, {"metadata": {"annotations": {PAUSED_REPLICAS: "0"}}})
        wait_for(lambda: kubernetes()["held_at_zero"], timeout=2)
        assert route_now(http, "process_speak_audio") == "background"


def _lists(kube: FakeKubeApi, plural: str) -> int:
    """List requests (not watches) made so far for `plural`."""
    return sum(
        1 for _, path, query in kube.requests if path.endswith(plural) and "watch" not in query
    )


@pytest.mark.integration
def test_a_real_worker_pod_scaled_to_zero_stops_getting_heavy_tasks_at_once(
    redis_url: str, kube: FakeKubeApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real `celery worker` subprocess named like a pod of the Deployment keeps beating while
    the Deployment is scaled to 0 (as a terminating pod would until SIGTERM lands): routing
    still flips within a second, and the heavy task runs in-process."""
    from scripts.harness.celery_processes import CeleryWorker
    from scripts.harness.scaled_api import HEARTBEAT as API_HEARTBEAT
    from scripts.harness.scaled_api import api, route_now, submit, wait_final, wait_route

    monkeypatch.setenv("REDIS_URL", redis_url)  # the sample tasks keep their evidence there
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kube.add_deployment(DEP, replicas=1)
    hostname = pod()
    with (
        CeleryWorker(redis_url, log_path=tmp_path / "worker.log", hostname=hostname) as worker,
        api(redis_url, kubernetes="on", worker_deployment=DEP) as http,
    ):
        wait_route(http, "celery_effect_once", "celery", timeout=5)

        kube.scale(DEP, 0)
        flipped = wait_route(http, "celery_effect_once", "background", timeout=1)

        assert flipped < 1.0
        assert worker.alive()
        score = redis.Redis.from_url(redis_url).zscore("tasklane:workers", hostname)
        beat_age = time.time() - (score or 0)
        assert beat_age < 3 * API_HEARTBEAT  # still live by its heartbeat
        record = wait_final(http, submit(http, "celery_effect_once", "kube-real", 0.0))
        assert (record["status"], record["executor"]) == ("SUCCESS", "background")

        kube.scale(DEP, 1)
        wait_route(http, "celery_effect_once", "celery", timeout=1)
        assert route_now(http, "celery_effect_once") == "celery"
