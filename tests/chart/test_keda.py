"""The KEDA ScaledObject and TriggerAuthentication: desired workers =
ceil((queued + running) / concurrency) over every consumed queue, Redis reached the way the
worker reaches it, the password read from the Secret by KEDA itself."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.core.tasks.broker_layout import BROKER_LAYOUT, BrokerLayout
from app.workers.celery_config import transport_options
from tests.chart.helpers import (
    KEDA_API,
    SCALED,
    Manifest,
    container,
    env_map,
    find,
    get,
    pod_spec,
    render_chart,
    render_error,
)

WORKER = "tl-tasklane-worker"


def _render(**worker: Any) -> list[Manifest]:
    return render_chart({"celery": {"enabled": True, "worker": worker}}, api_versions=[KEDA_API])


def _scaled_object(manifests: list[Manifest]) -> Manifest:
    return get(manifests, "ScaledObject", WORKER)


def test_scales_the_worker_deployment_reading_env_from_its_container() -> None:
    manifests = _render()
    target = _scaled_object(manifests)["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": WORKER,
        "envSourceContainerName": "worker",
    }
    assert container(get(manifests, "Deployment", WORKER), target["envSourceContainerName"])


# (heavy in each: heavy tasks route there, and the chart refuses a queue no pool consumes.)
@pytest.mark.parametrize("queues", [["heavy", "light"], ["heavy"], ["video", "bulk-mail", "heavy"]])
def test_redis_triggers_per_consumed_queue_count_every_priority_list(queues: list[str]) -> None:
    """queued_Q (and queued_Q_p3/p6/p9) read the Celery list Q and kombu's priority sub-lists;
    active_Q the ZSET of tasks running from Q (KEDA's redis scaler counts a ZSET with ZCARD),
    so busy workers are not scaled away."""
    triggers = _scaled_object(_render(queues=queues))["spec"]["triggers"]
    by_name = {t["name"]: t for t in triggers}
    assert len(by_name) == len(triggers) == 5 * len(queues)
    for queue in queues:
        ident = queue.replace("-", "_")
        queued = [by_name[f"queued_{ident}{suffix}"] for suffix in ("", "_p3", "_p6", "_p9")]
        assert [t["metadata"]["listName"] for t in queued] == [
            queue,
            f"{queue}:3",
            f"{queue}:6",
            f"{queue}:9",
        ]
        assert by_name[f"active_{ident}"]["metadata"]["listName"] == f"tasklane:active:{queue}"
    assert {t["type"] for t in triggers} == {"redis"}


@pytest.mark.parametrize("queue", ["heavy", "bulk-mail"])
def test_the_watched_lists_are_the_ones_the_app_publishes_to(queue: str) -> None:
    """One layout: the chart's `tasklane.queueLists` names every list kombu uses for the queue
    with the app's broker_transport_options (sep and priority steps)."""
    settings = Settings(celery_broker_url="redis://r:6379/0", redis_url="redis://r:6379/0")
    options = transport_options(settings)
    layout = BrokerLayout.from_transport_options(options)
    # The pool's one queue is where heavy tasks go (the chart refuses an unconsumed heavy queue).
    values = {"celery": {"enabled": True, "heavyQueue": queue, "worker": {"queues": [queue]}}}
    manifests = render_chart(values, api_versions=[KEDA_API])
    triggers = _scaled_object(manifests)["spec"]["triggers"]
    watched = [t["metadata"]["listName"] for t in triggers if t["name"].startswith("queued_")]
    assert layout == BROKER_LAYOUT
    assert watched == layout.queue_lists(queue)
    assert sorted({layout.queue_list(queue, priority) for priority in range(10)}) == sorted(watched)


def test_formula_sums_every_trigger() -> None:
    spec = _scaled_object(_render(queues=["heavy", "light", "bulk-mail"]))["spec"]
    formula = spec["advanced"]["scalingModifiers"]["formula"]
    terms = formula.split(" + ")
    assert sorted(terms) == sorted(t["name"] for t in spec["triggers"])
    assert all(term.isidentifier() for term in terms)
    assert spec["advanced"]["scalingModifiers"]["metricType"] == "AverageValue"


@pytest.mark.parametrize("concurrency", [1, 2, 7])
def test_target_per_pod_equals_the_concurrency_argument(concurrency: int) -> None:
    """One worker pod runs --concurrency tasks at once; that is what one replica absorbs."""
    manifests = _render(concurrency=concurrency)
    target = _scaled_object(manifests)["spec"]["advanced"]["scalingModifiers"]["target"]
    args = container(get(manifests, "Deployment", WORKER), "worker")["args"]
    assert target == args[args.index("--concurrency") + 1] == str(concurrency)


def test_redis_address_comes_from_the_worker_containers_env() -> None:
    manifests = _render()
    worker_env = env_map(container(get(manifests, "Deployment", WORKER), "worker"))
    for trigger in _scaled_object(manifests)["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert "address" not in metadata
        assert worker_env[metadata["addressFromEnv"]]["value"] == "tl-tasklane-redis:6379"
        assert metadata["databaseIndex"] == "0"


def test_password_comes_from_the_redis_secret_through_trigger_authentication() -> None:
    manifests = _render()
    auth = get(manifests, "TriggerAuthentication", "tl-tasklane-redis")
    (ref,) = auth["spec"]["secretTargetRef"]
    worker_env = env_map(container(get(manifests, "Deployment", WORKER), "worker"))
    assert ref["parameter"] == "password"
    password_ref = worker_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert {"name": ref["name"], "key": ref["key"]} == password_ref
    for trigger in _scaled_object(manifests)["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": "tl-tasklane-redis"}
        assert not {"password", "passwordFromEnv"} & trigger["metadata"].keys()


def test_replica_bounds_cooldown_and_stabilization() -> None:
    keda = {
        "minReplicaCount": 1,
        "maxReplicaCount": 30,
        "pollingInterval": 5,
        "cooldownPeriod": 900,
        "scaleDownStabilizationWindowSeconds": 120,
    }
    spec = _scaled_object(_render(autoscaling={"keda": keda}))["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 30)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (5, 900)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120


def test_cooldown_outlasts_the_worker_grace_period() -> None:
    manifests = _render()
    grace = pod_spec(get(manifests, "Deployment", WORKER))["terminationGracePeriodSeconds"]
    assert _scaled_object(manifests)["spec"]["cooldownPeriod"] > grace


@pytest.mark.parametrize("cooldown", [300, 360])
def test_cooldown_not_above_grace_fails(cooldown: int) -> None:
    values = {
        "celery": {
            "enabled": True,
            "worker": {"autoscaling": {"keda": {"cooldownPeriod": cooldown}}},
        }
    }
    message = render_error(values, api_versions=[KEDA_API])
    assert f"cooldownPeriod={cooldown} must exceed the worker termination grace period" in message


def test_min_above_max_fails() -> None:
    values = {
        "celery": {
            "enabled": True,
            "worker": {"autoscaling": {"keda": {"minReplicaCount": 5, "maxReplicaCount": 2}}},
        }
    }
    assert "minReplicaCount must not exceed maxReplicaCount" in render_error(
        values, api_versions=[KEDA_API]
    )


def test_key_prefix_moves_the_active_sets() -> None:
    manifests = render_chart({**SCALED, "keyPrefix": "shop:"}, api_versions=[KEDA_API])
    names = {
        t["name"]: t["metadata"]["listName"] for t in _scaled_object(manifests)["spec"]["triggers"]
    }
    assert names["active_heavy"] == "shop:active:heavy"
    assert (
        get(manifests, "ConfigMap", "tl-tasklane-config")["data"]["TASKLANE_KEY_PREFIX"] == "shop:"
    )


class TestExternalRedis:
    """redis.external: KEDA reaches the same host, database and TLS setting as the app."""

    URL = "rediss://cache.example.internal:6380/2"

    def _render(self, **external: Any) -> list[Manifest]:
        values = {**SCALED, "redis": {"external": {"url": self.URL, **external}}}
        return render_chart(values, api_versions=[KEDA_API])

    def test_triggers_follow_the_url(self) -> None:
        manifests = self._render(existingSecret="cache-auth", existingSecretKey="pw")
        worker_env = env_map(container(get(manifests, "Deployment", WORKER), "worker"))
        assert worker_env["REDIS_ADDRESS"]["value"] == "cache.example.internal:6380"
        assert worker_env["REDIS_URL"]["value"] == (
            "rediss://:$(REDIS_PASSWORD)@cache.example.internal:6380/2"
        )
        for trigger in _scaled_object(manifests)["spec"]["triggers"]:
            assert trigger["metadata"]["databaseIndex"] == "2"
            assert trigger["metadata"]["enableTLS"] == "true"
        auth = get(manifests, "TriggerAuthentication", "tl-tasklane-redis")
        (ref,) = auth["spec"]["secretTargetRef"]
        assert (ref["name"], ref["key"]) == ("cache-auth", "pw")
        assert not find(manifests, "StatefulSet")
        assert not find(manifests, "Secret", "tl-tasklane-redis-auth")

    def test_without_a_password_no_authentication(self) -> None:
        manifests = self._render()
        assert not find(manifests, "TriggerAuthentication")
        for trigger in _scaled_object(manifests)["spec"]["triggers"]:
            assert "authenticationRef" not in trigger
        worker_env = env_map(container(get(manifests, "Deployment", WORKER), "worker"))
        assert "REDIS_PASSWORD" not in worker_env
        assert worker_env["REDIS_URL"]["value"] == "rediss://cache.example.internal:6380/2"

    def test_default_port_is_6379(self) -> None:
        values = {**SCALED, "redis": {"external": {"url": "redis://cache.example.internal"}}}
        manifests = render_chart(values, api_versions=[KEDA_API])
        worker_env = env_map(container(get(manifests, "Deployment", WORKER), "worker"))
        assert worker_env["REDIS_ADDRESS"]["value"] == "cache.example.internal:6379"
        assert worker_env["REDIS_URL"]["value"] == "redis://cache.example.internal:6379/0"
