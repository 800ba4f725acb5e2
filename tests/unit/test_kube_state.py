"""What a Kubernetes view means for routing (app/core/kubernetes/state.py), as pure functions:
objects are parsed from the JSON the API server returns, and the two verdicts (held at zero,
scale-from-zero) follow DESIGN.md §3 and the pause annotations KEDA documents."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.core.kubernetes.state import (
    PAUSED,
    PAUSED_REPLICAS,
    DeploymentState,
    KubeView,
    PoolView,
    ScaledObjectState,
    pod_matcher,
    runs_in,
)

DEP = "demo-tasklane-worker"


def deployment(replicas: int | None) -> DeploymentState | None:
    if replicas is None:
        return None
    return DeploymentState.from_json(
        {"metadata": {"name": DEP}, "spec": {"replicas": replicas}, "status": {}}
    )


def scaled_object(
    *, min_replicas: int = 0, annotations: dict[str, str] | None = None, target: str = DEP
) -> ScaledObjectState:
    return ScaledObjectState.from_json(
        {
            "metadata": {"name": DEP, "annotations": annotations or {}},
            "spec": {"scaleTargetRef": {"name": target}, "minReplicaCount": min_replicas},
        }
    )


def view(**fields: Any) -> PoolView:
    """One pool: the worker Deployment DEP and the ScaledObject targeting it."""
    return PoolView(namespace="ns", deployment_name=DEP, scaled_object_name=DEP, **fields)


def test_objects_parse_with_the_api_servers_defaults() -> None:
    dep = DeploymentState.from_json({"metadata": {"name": DEP}, "spec": {}})
    so = ScaledObjectState.from_json(
        {"metadata": {"name": "so"}, "spec": {"scaleTargetRef": {"name": DEP}}}
    )

    assert (dep.replicas, dep.current_replicas, dep.ready_replicas) == (1, 0, 0)
    assert (so.min_replicas, so.max_replicas, so.target_kind) == (0, 100, "Deployment")
    assert so.autoscaling
    assert so.targets(DEP)
    assert not so.targets("other")


@pytest.mark.parametrize(
    ("annotations", "paused_replicas", "paused"),
    [
        ({PAUSED_REPLICAS: "0"}, 0, False),
        ({PAUSED_REPLICAS: "3"}, 3, False),
        ({PAUSED_REPLICAS: "not-a-number"}, None, False),
        ({PAUSED: "true"}, None, True),
        ({PAUSED: "false"}, None, False),
    ],
)
def test_pause_annotations(
    annotations: dict[str, str], paused_replicas: int | None, paused: bool
) -> None:
    so = scaled_object(annotations=annotations)

    assert (so.paused_replicas, so.paused) == (paused_replicas, paused)
    assert so.autoscaling is (paused_replicas is None and not paused)


@pytest.mark.parametrize(
    ("replicas", "so", "so_known", "flag", "held"),
    [
        # kubectl scale --replicas=0, no autoscaler: held, whatever the flag says once KEDA is
        # known to be absent
        (0, None, True, False, True),
        (0, None, True, True, True),
        # KEDA min 0 resting at zero: an autoscaler's choice, not a hold
        (0, scaled_object(min_replicas=0), True, False, False),
        # KEDA paused at zero (annotation) holds, even while the Deployment still runs pods
        (2, scaled_object(annotations={PAUSED_REPLICAS: "0"}), True, False, True),
        # paused at 3 while the Deployment is still at 0: KEDA will bring it to 3
        (0, scaled_object(annotations={PAUSED_REPLICAS: "3"}), True, False, False),
        # paused at the current count, which is 0
        (0, scaled_object(annotations={PAUSED: "true"}), True, False, True),
        # a ScaledObject for another Deployment does not own this one
        (0, scaled_object(target="other"), True, False, True),
        (3, None, True, False, False),
        # ScaledObjects unreadable: the flag says whether zero is KEDA's resting state
        (0, None, False, False, True),
        (0, None, False, True, False),
        # Deployment unknown or missing: no verdict from Kubernetes
        (None, None, True, False, False),
    ],
)
def test_held_at_zero(
    replicas: int | None, so: ScaledObjectState | None, so_known: bool, flag: bool, held: bool
) -> None:
    subject = view(
        deployment=deployment(replicas),
        deployment_known=True,
        scaled_object=so,
        scaled_object_known=so_known,
    )

    assert subject.held_at_zero(flag) is held


@pytest.mark.parametrize(
    ("so", "so_known", "keda_installed", "expected"),
    [
        (scaled_object(min_replicas=0), True, True, True),
        (scaled_object(min_replicas=1), True, True, False),
        (scaled_object(annotations={PAUSED_REPLICAS: "0"}), True, True, False),
        (scaled_object(annotations={PAUSED: "true"}), True, True, False),
        (scaled_object(target="other"), True, True, False),
        (None, True, True, False),  # no ScaledObject targets the Deployment
        (None, True, False, False),  # KEDA's CRD is not served
        (None, False, None, None),  # no data: the flag decides
    ],
)
def test_scale_from_zero_comes_from_the_scaled_object(
    so: ScaledObjectState | None, so_known: bool, keda_installed: bool | None, expected: bool | None
) -> None:
    subject = view(scaled_object=so, scaled_object_known=so_known, keda_installed=keda_installed)

    assert subject.scale_from_zero() is expected
    described = subject.describe(scale_from_zero_flag=True)
    assert described["scale_from_zero"] is (True if expected is None else expected)
    assert described["scale_from_zero_source"] == ("flag" if expected is None else "kubernetes")


@pytest.mark.parametrize(
    ("hostname", "belongs"),
    [
        (f"celery@{DEP}-7d9c5b8f4-x2x7k", True),
        (f"worker1@{DEP}-5f6b9-abcde", True),
        (f"celery@{DEP}-audio-7d9c5b8f4-x2x7k", False),  # another Deployment's pods
        (f"celery@{DEP}", False),
        ("celery@laptop", False),
    ],
)
def test_pods_of_the_deployment_are_told_from_other_workers(hostname: str, belongs: bool) -> None:
    assert runs_in(hostname, pod_matcher(DEP)) is belongs


def test_kubernetes_setting_auto_is_on_only_in_a_cluster_with_a_deployment_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not Settings(worker_deployment=DEP).kubernetes_enabled
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert Settings(worker_deployment=DEP).kubernetes_enabled
    assert not Settings().kubernetes_enabled
    assert not Settings(kubernetes="off", worker_deployment=DEP).kubernetes_enabled
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert Settings(kubernetes="on", worker_deployment=DEP).kubernetes_enabled


def test_kubernetes_on_without_a_deployment_fails_fast_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="TASKLANE_WORKER_DEPLOYMENT"):
        Settings(kubernetes="on").check()


def test_namespace_defaults_to_the_service_account_namespace_then_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    mounted = tmp_path / "namespace"
    monkeypatch.setattr("app.config.SERVICE_ACCOUNT_NAMESPACE", mounted)
    assert Settings().resolved_namespace == "default"
    mounted.write_text("prod\n")
    assert Settings().resolved_namespace == "prod"
    assert Settings(namespace="staging").resolved_namespace == "staging"
    assert Settings(worker_deployment=DEP).resolved_scaled_object == DEP
    assert Settings(worker_deployment=DEP, scaled_object="so").resolved_scaled_object == "so"


def _pool(name: str, queues: str | None, replicas: int) -> DeploymentState:
    annotations = {"tasklane.io/queues": queues} if queues is not None else {}
    return DeploymentState.from_json(
        {"metadata": {"name": name, "annotations": annotations}, "spec": {"replicas": replicas}}
    )


def pools_view(heavy_replicas: int, *scaled: ScaledObjectState) -> KubeView:
    """Two pools found by labels: heavy (queue heavy) and light (light)."""
    return KubeView(
        namespace="ns",
        selector="app.kubernetes.io/instance=tl,app.kubernetes.io/component=worker",
        deployments=(_pool("tl-heavy", "heavy", heavy_replicas), _pool("tl-light", "light", 2)),
        deployment_known=True,
        scaled_objects=scaled,
        scaled_object_known=True,
        keda_installed=True,
    )


def test_a_pool_held_at_zero_holds_only_the_queues_no_other_pool_consumes() -> None:
    subject = pools_view(0)

    assert [p.deployment_name for p in subject.pools] == ["tl-heavy", "tl-light"]
    assert [p.deployment_name for p in subject.held(False)] == ["tl-heavy"]
    assert subject.held_at_zero(False, "heavy")
    assert not subject.held_at_zero(False, "light")
    assert subject.held_at_zero(False)  # some pool is held
    assert not subject.held_at_zero(False, "video")  # no pool consumes it: heartbeats decide
    # A third pool consuming heavy too, and running, keeps heavy served.
    both = KubeView(
        namespace="ns",
        selector="x=y",
        deployments=(*subject.deployments, _pool("tl-heavy2", "heavy,light", 1)),
        deployment_known=True,
        scaled_object_known=True,
    )
    assert not both.held_at_zero(False, "heavy")


def test_scale_from_zero_is_per_queue_from_the_pools_consuming_it() -> None:
    keda = ScaledObjectState.from_json(
        {"metadata": {"name": "tl-light"}, "spec": {"scaleTargetRef": {"name": "tl-light"}}}
    )
    subject = pools_view(1, keda)

    assert subject.scale_from_zero("light") is True
    assert subject.scale_from_zero("heavy") is False  # its pool has no ScaledObject
    assert subject.scale_from_zero() is True
    described = subject.describe(scale_from_zero_flag=False)
    assert [(p["deployment"]["name"], p["queues"]) for p in described["pools"]] == [
        ("tl-heavy", ["heavy"]),
        ("tl-light", ["light"]),
    ]
    assert "deployment" not in described  # several pools: no single Deployment to show
    unknown = KubeView(namespace="ns", selector="x=y", deployments=subject.deployments)
    assert unknown.scale_from_zero("light") is None  # no data: the flag decides


def test_a_deployment_without_the_queues_annotation_consumes_every_queue() -> None:
    """TASKLANE_WORKER_DEPLOYMENT of an older release: one pool for every queue, as before."""
    subject = KubeView(
        namespace="ns",
        deployment_name="old-worker",
        scaled_object_name="old-worker",
        deployments=(_pool("old-worker", None, 0),),
        deployment_known=True,
        scaled_object_known=True,
    )

    assert subject.held_at_zero(False, "heavy")
    assert subject.held_at_zero(False, "anything")
    assert subject.describe(False)["deployment"]["name"] == "old-worker"
