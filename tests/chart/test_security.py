"""Every pod of every mode runs unprivileged with a read-only root file system, no service
account token and no secret in its spec; config changes roll the pods."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.helpers import KEDA_API, Manifest, containers, get, render_chart

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


def _effective(pod: dict[str, Any], spec: dict[str, Any], field: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    return spec.get("securityContext", {}).get(field, pod.get("securityContext", {}).get(field))


def test_every_container_runs_as_non_root_with_a_read_only_root(
    ci_manifests: list[Manifest],
) -> None:
    workloads = [m for m in ci_manifests if m["kind"] in WORKLOAD_KINDS]
    assert workloads
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        # Only the api (its watch, tests/chart/test_rbac.py) and the secrets hook Job talk to
        # the Kubernetes API.
        expect_token = workload["kind"] == "Job" or (
            workload["metadata"]["name"].endswith("-api")
            and any(
                m["kind"] == "Role" and m["metadata"]["name"].endswith("-api") for m in ci_manifests
            )
        )
        assert pod["automountServiceAccountToken"] is expect_token
        for spec in containers(workload):
            where = f"{workload['metadata']['name']}/{spec['name']}"
            assert _effective(pod, spec, "runAsNonRoot") is True, where
            assert _effective(pod, spec, "runAsUser") not in (None, 0), where
            assert spec["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert spec["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert _effective(pod, spec, "seccompProfile") == {"type": "RuntimeDefault"}, where
            assert spec["resources"].get("requests"), where


def test_app_containers_run_as_the_image_user(ci_manifests: list[Manifest]) -> None:
    for workload in ci_manifests:
        if workload["kind"] != "Deployment":
            continue
        pod = workload["spec"]["template"]["spec"]
        for spec in containers(workload):
            assert _effective(pod, spec, "runAsUser") == 10001
            assert _effective(pod, spec, "runAsGroup") == 10001


def test_writable_paths_are_emptydirs(ci_manifests: list[Manifest]) -> None:
    """Read-only root: /tmp (beat schedule, uvicorn) and the metrics directory are volumes."""
    for workload in ci_manifests:
        if workload["kind"] != "Deployment":
            continue
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        for spec in containers(workload):
            mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            assert "emptyDir" in volumes[mounts["/tmp/tasklane-metrics"]]


#: Fixed secrets: generated ones are new on every `helm template` (lookup finds no live Secret),
#: which would change checksum/secret on its own.
FIXED = {
    "celery": {"enabled": True},
    "api": {"token": "a-token"},
    "redis": {"auth": {"existingSecret": "redis-auth"}},
}


def _checksums(values: dict[str, Any], component: str, *, cache: bool = True) -> dict[str, str]:
    manifests = render_chart(values, api_versions=[KEDA_API], cache=cache)
    deployment = get(manifests, "Deployment", f"tl-tasklane-{component}")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


@pytest.mark.parametrize("component", ["api", "worker", "beat"])
def test_unchanged_settings_keep_the_pods(component: str) -> None:
    """Two renders of the same values must not roll anything."""
    first = _checksums(FIXED, component, cache=False)
    assert set(first) == {"checksum/config", "checksum/secret"}
    assert _checksums(FIXED, component, cache=False) == first


@pytest.mark.parametrize(
    ("change", "rolled"),
    [
        ({"logging": {"level": "DEBUG", "format": "json"}}, "checksum/config"),
        ({"api": {"token": "another-token"}}, "checksum/secret"),
    ],
)
@pytest.mark.parametrize("component", ["api", "worker", "beat"])
def test_changed_settings_roll_the_pods(
    change: dict[str, Any], rolled: str, component: str
) -> None:
    before, after = _checksums(FIXED, component), _checksums({**FIXED, **change}, component)
    assert {key for key in before if before[key] != after[key]} == {rolled}
