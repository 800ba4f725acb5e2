"""Celery beat (exactly one, never autoscaled) and the bundled Redis (StatefulSet, Services,
password, persistence, NetworkPolicy)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.helpers import (
    KEDA_API,
    SCALED,
    Manifest,
    container,
    containers,
    find,
    get,
    pod_labels,
    render_chart,
)

BEAT = "tl-tasklane-beat"
REDIS = "tl-tasklane-redis"


class TestBeat:
    def test_one_replica_replaced_not_rolled(self) -> None:
        """A rolling update would run two beats for a moment and send every entry twice."""
        spec = get(render_chart(SCALED), "Deployment", BEAT)["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}

    def test_command(self) -> None:
        beat = container(get(render_chart(SCALED), "Deployment", BEAT), "beat")
        assert [*beat["command"], *beat["args"]] == [
            "tasklane",
            "beat",
            "--schedule",
            "/tmp/celerybeat-schedule",
        ]

    @pytest.mark.parametrize(
        ("worker", "api_versions"),
        [
            ({}, [KEDA_API]),
            ({"autoscaling": {"keda": {"enabled": False}, "hpa": {"enabled": True}}}, []),
        ],
    )
    def test_never_autoscaled_and_workers_never_embed_beat(
        self, worker: dict[str, Any], api_versions: list[str]
    ) -> None:
        manifests = render_chart(
            {"celery": {"enabled": True, "worker": worker}}, api_versions=api_versions
        )
        scalers = find(manifests, "ScaledObject") + find(manifests, "HorizontalPodAutoscaler")
        assert scalers
        assert {s["spec"]["scaleTargetRef"]["name"] for s in scalers} == {"tl-tasklane-worker"}
        worker = container(get(manifests, "Deployment", "tl-tasklane-worker"), "worker")
        assert not {"-B", "--beat"} & set(worker["args"])

    def test_disabled_beat_hands_the_schedule_to_the_api(self) -> None:
        manifests = render_chart({"celery": {"enabled": True, "beat": {"enabled": False}}})
        assert not find(manifests, "Deployment", BEAT)
        config = get(manifests, "ConfigMap", "tl-tasklane-config")["data"]
        assert config["TASKLANE_SCHEDULER"] == "on"

    def test_scheduler_left_to_the_app_while_beat_runs(self) -> None:
        config = get(render_chart(SCALED), "ConfigMap", "tl-tasklane-config")["data"]
        assert "TASKLANE_SCHEDULER" not in config


class TestRedis:
    def test_statefulset_runs_redis_server_behind_its_services(self) -> None:
        manifests = render_chart(SCALED)
        statefulset = get(manifests, "StatefulSet", REDIS)
        redis = container(statefulset, "redis")
        assert redis["image"] == "redis:7-alpine"
        assert redis["command"] == ["redis-server"]
        assert redis["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
        headless = get(manifests, "Service", f"{REDIS}-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert statefulset["spec"]["serviceName"] == f"{REDIS}-headless"
        labels = pod_labels(statefulset)
        for service in (get(manifests, "Service", REDIS), headless):
            assert service["spec"]["selector"].items() <= labels.items()
            assert service["spec"]["ports"][0]["port"] == 6379

    def test_runs_as_the_images_redis_user(self) -> None:
        pod = get(render_chart(SCALED), "StatefulSet", REDIS)["spec"]["template"]["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["fsGroup"]) == (
            999,
            1000,
        )

    def test_emptydir_without_persistence(self) -> None:
        spec = get(render_chart(SCALED), "StatefulSet", REDIS)["spec"]
        assert "volumeClaimTemplates" not in spec
        assert {"name": "data", "emptyDir": {}} in spec["template"]["spec"]["volumes"]

    def test_claim_with_persistence(self) -> None:
        values = {
            **SCALED,
            "redis": {"persistence": {"enabled": True, "size": "5Gi", "storageClass": "fast"}},
        }
        spec = get(render_chart(values), "StatefulSet", REDIS)["spec"]
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
        assert claim["spec"]["storageClassName"] == "fast"
        assert "volumes" not in spec["template"]["spec"]

    def test_not_rendered_for_an_external_redis(self) -> None:
        values = {**SCALED, "redis": {"external": {"url": "redis://cache.example:6379/0"}}}
        manifests = render_chart(values)
        assert not [m for m in manifests if m["metadata"]["name"].startswith(REDIS)]


class TestNetworkPolicy:
    """Redis only answers this release's app pods (and KEDA's operator when it scales them)."""

    def _ingress_peers(self, manifests: list[Manifest]) -> list[dict[str, Any]]:
        policy = get(manifests, "NetworkPolicy", REDIS)
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
        return rule["from"]

    def test_allows_api_worker_beat_and_keda(self) -> None:
        manifests = render_chart(
            {**SCALED, "networkPolicy": {"enabled": True}}, api_versions=[KEDA_API]
        )
        peers = self._ingress_peers(manifests)
        app_peers = [p["podSelector"]["matchLabels"] for p in peers if "namespaceSelector" not in p]
        for name in ("api", "worker", "beat"):
            labels = pod_labels(get(manifests, "Deployment", f"tl-tasklane-{name}"))
            assert sum(peer.items() <= labels.items() for peer in app_peers) == 1
        (keda,) = [p for p in peers if "namespaceSelector" in p]
        assert keda["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
        policy = get(manifests, "NetworkPolicy", REDIS)
        redis_labels = pod_labels(get(manifests, "StatefulSet", REDIS))
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()

    def test_no_keda_peer_without_a_scaledobject(self) -> None:
        manifests = render_chart({**SCALED, "networkPolicy": {"enabled": True}})
        assert all("namespaceSelector" not in peer for peer in self._ingress_peers(manifests))

    def test_app_peers_do_not_match_another_release(self) -> None:
        """Selectors carry the instance label, so a second release's pods are not let in."""
        manifests = render_chart({**SCALED, "networkPolicy": {"enabled": True}})
        other = render_chart(SCALED, name="other")
        other_labels = [pod_labels(m) for m in find(other, "Deployment")]
        assert len(other_labels) == 3
        for peer in self._ingress_peers(manifests):
            for labels in other_labels:
                assert not peer["podSelector"]["matchLabels"].items() <= labels.items()

    def test_api_policy_limits_ingress_to_http(self) -> None:
        values = {
            "networkPolicy": {
                "enabled": True,
                "api": {
                    "enabled": True,
                    "from": [{"podSelector": {"matchLabels": {"role": "gateway"}}}],
                },
            }
        }
        policy = get(render_chart(values), "NetworkPolicy", "tl-tasklane-api")
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"role": "gateway"}}}]

    def test_workers_and_beat_accept_only_metrics_scrapes(self) -> None:
        manifests = render_chart({**SCALED, "networkPolicy": {"enabled": True}})
        policy = get(manifests, "NetworkPolicy", "tl-tasklane-workers")
        (rule,) = policy["spec"]["ingress"]
        assert rule == {"ports": [{"port": "metrics", "protocol": "TCP"}]}
        selector = policy["spec"]["podSelector"]
        for deployment in find(manifests, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            selected = selector["matchLabels"].items() <= labels.items() and all(
                labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
            )
            component = labels["app.kubernetes.io/component"]
            assert selected == (component in {"worker", "beat"}), component

    def test_off_by_default(self) -> None:
        assert not find(render_chart(SCALED), "NetworkPolicy")


def test_every_redis_container_is_probed() -> None:
    for spec in containers(get(render_chart(SCALED), "StatefulSet", REDIS)):
        assert "livenessProbe" in spec
        assert "readinessProbe" in spec
