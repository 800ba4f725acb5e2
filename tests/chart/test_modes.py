"""Single mode (the defaults) and scaled mode (celery.enabled): which objects exist and what the
api is told to run with, the upgrade between them, and the render-time refusals."""

from __future__ import annotations

import pytest

from tests.chart.helpers import (
    KEDA_API,
    SCALED,
    SCALED_KEDA,
    Manifest,
    container,
    env_map,
    find,
    get,
    render_chart,
    render_error,
)

API = "tl-tasklane-api"
CONFIG = "tl-tasklane-config"


def _config(manifests: list[Manifest]) -> dict[str, str]:
    return get(manifests, "ConfigMap", CONFIG)["data"]


def _names(manifests: list[Manifest]) -> set[str]:
    return {f"{m['kind']}/{m['metadata']['name']}" for m in manifests}


class TestSingleMode:
    """Defaults: one api pod with the in-process executor and memory store, nothing else."""

    def test_renders_only_the_api_and_its_settings(self) -> None:
        assert _names(render_chart()) == {
            "ServiceAccount/tl-tasklane",
            "ConfigMap/tl-tasklane-config",
            "Service/tl-tasklane-api",
            "Deployment/tl-tasklane-api",
            # The hook that generates the api token in the cluster (tests/chart/test_secrets.py).
            "Job/tl-tasklane-secrets",
            "ServiceAccount/tl-tasklane-secrets",
            "Role/tl-tasklane-secrets",
            "RoleBinding/tl-tasklane-secrets",
        }

    def test_keda_in_the_cluster_adds_nothing_without_celery(self) -> None:
        """A KEDA-capable cluster must not get a ScaledObject for workers that do not exist."""
        assert _names(render_chart(api_versions=[KEDA_API])) == _names(render_chart())

    def test_api_runs_background_executor_with_memory_store(self) -> None:
        config = _config(render_chart())
        assert config["TASKLANE_EXECUTOR"] == "background"
        assert config["TASKLANE_STORE"] == "memory"
        assert config["TASKLANE_SCALE_FROM_ZERO"] == "false"

    def test_tracebacks_are_served_only_when_asked(self) -> None:
        assert _config(render_chart())["TASKLANE_EXPOSE_TRACEBACKS"] == "false"
        exposed = render_chart({"api": {"exposeTracebacks": True}})
        assert _config(exposed)["TASKLANE_EXPOSE_TRACEBACKS"] == "true"

    def test_api_gets_no_redis_or_broker(self) -> None:
        api = container(get(render_chart(), "Deployment", API), "api")
        assert not {"REDIS_URL", "CELERY_BROKER_URL", "REDIS_PASSWORD"} & env_map(api).keys()

    def test_api_command_is_tasklane_serve(self) -> None:
        api = container(
            get(render_chart({"store": "redis", "api": {"workers": 3}}), "Deployment", API), "api"
        )
        assert [*api["command"], *api["args"]] == [
            "tasklane",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--workers",
            "3",
        ]

    def test_api_probes_and_port(self) -> None:
        api = container(get(render_chart(), "Deployment", API), "api")
        assert api["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}

    def test_api_reads_settings_from_the_configmap(self) -> None:
        api = container(get(render_chart(), "Deployment", API), "api")
        assert api["envFrom"] == [{"configMapRef": {"name": CONFIG}}]

    def test_redis_store_brings_redis_but_no_celery(self) -> None:
        manifests = render_chart({"store": "redis"})
        assert find(manifests, "StatefulSet", "tl-tasklane-redis")
        assert not find(manifests, "Deployment", "tl-tasklane-worker")
        config = _config(manifests)
        assert (config["TASKLANE_EXECUTOR"], config["TASKLANE_STORE"]) == ("background", "redis")
        env = env_map(container(get(manifests, "Deployment", API), "api"))
        assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@tl-tasklane-redis:6379/0"
        assert "CELERY_BROKER_URL" not in env


class TestScaledMode:
    """celery.enabled=true: workers, beat and Redis join; the api routes (hybrid) on Redis."""

    def test_adds_worker_beat_redis_and_scaledobject(self) -> None:
        added = _names(render_chart(SCALED, api_versions=[KEDA_API])) - _names(render_chart())
        assert added == {
            "Deployment/tl-tasklane-worker",
            "Deployment/tl-tasklane-beat",
            "PodDisruptionBudget/tl-tasklane-worker",
            "StatefulSet/tl-tasklane-redis",
            "Service/tl-tasklane-redis",
            "Service/tl-tasklane-redis-headless",
            "ScaledObject/tl-tasklane-worker",
            "TriggerAuthentication/tl-tasklane-redis",
            "Role/tl-tasklane-api",
            "RoleBinding/tl-tasklane-api",
        }

    def test_force_renders_the_scaledobject_without_the_keda_api(self) -> None:
        assert find(render_chart(SCALED_KEDA), "ScaledObject", "tl-tasklane-worker")

    def test_no_scaledobject_when_the_cluster_lacks_keda(self) -> None:
        """Applying a ScaledObject without its CRD would fail the whole install."""
        manifests = render_chart(SCALED)
        assert find(manifests, "Deployment", "tl-tasklane-worker")
        assert not find(manifests, "ScaledObject")
        assert not find(manifests, "TriggerAuthentication")

    @pytest.mark.parametrize("executor", ["hybrid", "celery"])
    def test_api_switches_executor_and_store(self, executor: str) -> None:
        config = _config(render_chart({"celery": {"enabled": True, "executor": executor}}))
        assert (config["TASKLANE_EXECUTOR"], config["TASKLANE_STORE"]) == (executor, "redis")

    @pytest.mark.parametrize("component", ["api", "worker", "beat"])
    def test_every_process_gets_the_same_broker_and_store(self, component: str) -> None:
        manifests = render_chart(SCALED)
        env = env_map(
            container(get(manifests, "Deployment", f"tl-tasklane-{component}"), component)
        )
        url = "redis://:$(REDIS_PASSWORD)@tl-tasklane-redis:6379/0"
        assert env["REDIS_URL"]["value"] == url
        assert env["CELERY_BROKER_URL"]["value"] == url

    @pytest.mark.parametrize(
        ("keda", "api_versions", "expected"),
        [
            ({}, [KEDA_API], "true"),
            ({"minReplicaCount": 1}, [KEDA_API], "false"),
            ({}, [], "false"),
            ({"force": True}, [], "true"),
        ],
    )
    def test_scale_from_zero_only_while_keda_may_empty_the_pool(
        self, keda: dict, api_versions: list[str], expected: str
    ) -> None:
        """The hybrid executor treats an empty pool as "starting" only when KEDA will start it;
        otherwise heavy tasks would queue for workers that never come."""
        values = {"celery": {"enabled": True, "worker": {"autoscaling": {"keda": keda}}}}
        config = _config(render_chart(values, api_versions=api_versions))
        assert config["TASKLANE_SCALE_FROM_ZERO"] == expected

    def test_queue_names_reach_the_app(self) -> None:
        values = {"celery": {"enabled": True, "lightQueue": "fast", "heavyQueue": "slow"}}
        config = _config(render_chart(values))
        assert (config["TASKLANE_LIGHT_QUEUE"], config["TASKLANE_HEAVY_QUEUE"]) == ("fast", "slow")


def test_ingress_routes_to_the_api_service() -> None:
    values = {"api": {"ingress": {"enabled": True, "className": "nginx"}, "service": {"port": 80}}}
    manifests = render_chart(values)
    ingress = get(manifests, "Ingress", API)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "tasklane.local"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": API, "port": {"number": 80}}
    assert get(manifests, "Service", API)["spec"]["ports"][0]["port"] == 80


def test_upgrade_to_scaled_keeps_the_api_service_and_selector() -> None:
    """`helm upgrade --set celery.enabled=true` must not break clients of the api Service nor
    hit the immutable Deployment selector."""
    single, scaled = render_chart(), render_chart(SCALED, api_versions=[KEDA_API])
    single_svc, scaled_svc = get(single, "Service", API), get(scaled, "Service", API)
    assert scaled_svc["spec"] == single_svc["spec"]
    single_api, scaled_api = get(single, "Deployment", API), get(scaled, "Deployment", API)
    assert scaled_api["spec"]["selector"] == single_api["spec"]["selector"]
    pod_labels = scaled_api["spec"]["template"]["metadata"]["labels"]
    assert scaled_svc["spec"]["selector"].items() <= pod_labels.items()


class TestRefusals:
    """Values that cannot work fail the render with a message naming what to change."""

    @pytest.mark.parametrize("replicas", [2, 5])
    def test_memory_store_with_several_api_replicas(self, replicas: int) -> None:
        message = render_error({"api": {"replicas": replicas}})
        assert f"api.replicas={replicas} needs a shared store" in message
        assert "store=redis" in message

    def test_memory_store_with_several_uvicorn_workers(self) -> None:
        assert "api.workers=2 needs a shared store" in render_error({"api": {"workers": 2}})

    def test_several_replicas_are_fine_with_a_shared_store(self) -> None:
        manifests = render_chart({"store": "redis", "api": {"replicas": 3}})
        assert get(manifests, "Deployment", API)["spec"]["replicas"] == 3
        assert get(manifests, "PodDisruptionBudget", API)["spec"]["maxUnavailable"] == 1

    def test_celery_with_memory_store(self) -> None:
        message = render_error({"celery": {"enabled": True}, "store": "memory"})
        assert "Celery workers cannot see the api's in-memory records" in message

    def test_redis_needed_but_none_configured(self) -> None:
        message = render_error({"celery": {"enabled": True}, "redis": {"enabled": False}})
        assert "redis.external.url is empty" in message

    def test_external_url_with_a_password(self) -> None:
        values = {**SCALED, "redis": {"external": {"url": "redis://:hunter2@redis.example:6379/0"}}}
        assert "must not contain a password" in render_error(values)

    def test_api_shutdown_grace_inside_the_kill_deadline(self) -> None:
        values = {"api": {"shutdownGraceSeconds": 30, "terminationGracePeriodSeconds": 30}}
        assert "must be below api.terminationGracePeriodSeconds=30" in render_error(values)
