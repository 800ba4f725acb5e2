"""The api's read-only access to the worker Deployments and their ScaledObjects: rendered only
in scaled mode with rbac.create, scoped to the release namespace, and the only pod with a token.
get/list/watch on deployments covers the watch's labelSelector list of every pool."""

from __future__ import annotations

from app.core.kubernetes.scaling import release_worker_selector
from tests.chart.helpers import SCALED, container, env_map, find, get, pod_spec, render_chart

API = "tl-tasklane-api"


def test_scaled_mode_grants_the_api_get_list_watch_on_deployments_and_scaledobjects() -> None:
    manifests = render_chart(SCALED)
    role = get(manifests, "Role", API)
    assert role["metadata"]["namespace"] == "default"
    assert sorted((tuple(r["apiGroups"]), tuple(r["resources"])) for r in role["rules"]) == [
        (("apps",), ("deployments",)),
        (("keda.sh",), ("scaledobjects",)),
    ]
    for rule in role["rules"]:
        assert rule["verbs"] == ["get", "list", "watch"]  # read-only: never patch or delete
    binding = get(manifests, "RoleBinding", API)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": API,
    }
    account = pod_spec(get(manifests, "Deployment", API))["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "default"}
    ]
    assert not find(manifests, "ClusterRole")
    assert not find(manifests, "ClusterRoleBinding")


def test_only_the_api_pod_mounts_a_token_and_it_knows_which_deployment_to_watch() -> None:
    manifests = render_chart(SCALED)
    tokens = {
        obj["metadata"]["name"]: pod_spec(obj)["automountServiceAccountToken"]
        for kind in ("Deployment", "StatefulSet")
        for obj in find(manifests, kind)
    }
    assert tokens == {
        API: True,
        "tl-tasklane-worker": False,
        "tl-tasklane-beat": False,
        "tl-tasklane-redis": False,
    }
    env = env_map(container(get(manifests, "Deployment", API), "api"))
    # Every pool's Deployment, by the labels `tasklane scale --release` selects by too.
    assert env["TASKLANE_WORKER_SELECTOR"]["value"] == release_worker_selector("tl")
    assert "TASKLANE_WORKER_DEPLOYMENT" not in env
    worker_env = env_map(container(get(manifests, "Deployment", "tl-tasklane-worker"), "worker"))
    assert "TASKLANE_WORKER_SELECTOR" not in worker_env


def test_single_mode_and_rbac_off_render_no_role_and_no_token() -> None:
    for values in ({}, {**SCALED, "rbac": {"create": False}}):
        manifests = render_chart(values)
        assert not find(manifests, "Role", API)
        assert not find(manifests, "RoleBinding", API)
        api = get(manifests, "Deployment", API)
        assert pod_spec(api)["automountServiceAccountToken"] is False
        assert "TASKLANE_WORKER_SELECTOR" not in env_map(container(api, "api"))
