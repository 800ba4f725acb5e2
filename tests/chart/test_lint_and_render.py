"""`helm lint --strict` and `helm template` on every ci/ values file, every object validated
(DESIGN §7); and proof that the validator rejects what it should, so a green run means
something."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.conftest import CI_VALUES_FILES
from tests.chart.helpers import (
    CHART_DIR,
    KUBERNETES_VERSION,
    SCALED_KEDA,
    UnknownKindError,
    get,
    render_chart,
    run_helm,
    validate_manifest,
)

#: What each ci/ file must render: a file that silently stops rendering a kind (a gate gone
#: wrong) fails here rather than passing validation with fewer objects.
#: The secrets hook Job (with its Role and RoleBinding) replaces the rendered Secrets wherever
#: a Secret is generated; scaled-external-redis supplies both (api.token, existingSecret).
HOOK_KINDS = {"Job", "Role", "RoleBinding"}
EXPECTED_KINDS: dict[str, set[str]] = {
    "single": {"ServiceAccount", "ConfigMap", "Service", "Deployment", *HOOK_KINDS},
    "single-redis": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "Ingress",
        "PodDisruptionBudget",
        "NetworkPolicy",
        *HOOK_KINDS,
    },
    "scaled-keda": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ScaledObject",
        "TriggerAuthentication",
        *HOOK_KINDS,
    },
    "scaled-hpa": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        *HOOK_KINDS,
    },
    "scaled-external-redis": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
    },
    "scaled-pools": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "PodMonitor",
        "Role",
        "RoleBinding",
        *HOOK_KINDS,
    },
    "monitoring": {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        *HOOK_KINDS,
    },
}


def test_ci_values_files_cover_every_mode() -> None:
    """The modes the chart promises each have a values file that CI renders."""
    assert {path.stem for path in CI_VALUES_FILES} == set(EXPECTED_KINDS)


@pytest.mark.parametrize(
    "values_file", [None, *CI_VALUES_FILES], ids=lambda p: getattr(p, "stem", "defaults")
)
def test_helm_lint_strict_passes(values_file: Path | None) -> None:
    """--strict turns lint warnings and missing value references into failures."""
    args = ["lint", "--strict", str(CHART_DIR)]
    if values_file is not None:
        args += ["--values", str(values_file)]
    output = run_helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in output


def test_ci_file_renders_expected_kinds(ci_values_file: Path, ci_manifests: list[dict]) -> None:
    """Each file renders exactly its mode's kinds (render_chart has validated every object)."""
    assert {m["kind"] for m in ci_manifests} == EXPECTED_KINDS[ci_values_file.stem]


def _template(values_file: Path, *extra: str) -> str:
    return run_helm(
        "template", "tl", str(CHART_DIR), "--kube-version", KUBERNETES_VERSION,
        "--values", str(values_file), *extra,
    )  # fmt: skip


def test_ci_file_renders_the_same_bytes_twice(ci_values_file: Path) -> None:
    """Argo CD renders with `helm template` on every sync: a value that changed between two
    renders (a generated password, a checksum of one) would restart every pod and rotate the
    password under running workers. Nothing random is rendered; the hook Job generates it."""
    assert _template(ci_values_file) == _template(ci_values_file)


def test_no_hooks_renders_every_object_but_the_hooks(ci_values_file: Path) -> None:
    """`helm install --no-hooks` still installs the whole release: hooks only add the secrets
    Job and its RBAC (whoever skips them supplies existing Secrets)."""
    with_hooks = [doc for doc in yaml.safe_load_all(_template(ci_values_file)) if doc]
    without = [doc for doc in yaml.safe_load_all(_template(ci_values_file, "--no-hooks")) if doc]
    hooks = [doc for doc in with_hooks if "helm.sh/hook" in doc["metadata"].get("annotations", {})]
    assert without == [doc for doc in with_hooks if doc not in hooks]
    assert {doc["metadata"]["name"] for doc in hooks} <= {"tl-tasklane-secrets"}


def test_ci_objects_have_unique_names(ci_manifests: list[dict]) -> None:
    """Two objects of one kind and name would overwrite each other on install."""
    keys = [(m["kind"], m["metadata"]["name"]) for m in ci_manifests]
    assert len(keys) == len(set(keys))


class TestValidator:
    """The validator behind render_chart catches the mistakes it exists for."""

    def test_misspelt_field_of_a_core_kind_fails(self) -> None:
        deployment = copy.deepcopy(get(render_chart(), "Deployment", "tl-tasklane-api"))
        deployment["spec"]["replica"] = 2
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_manifest(deployment)

    def test_misspelt_field_of_a_crd_kind_fails(self) -> None:
        """The API server would prune it silently; the strict CRD schema refuses it."""
        manifests = render_chart(SCALED_KEDA)
        scaled_object = get(manifests, "ScaledObject", "tl-tasklane-worker")
        scaled_object["spec"]["cooldownPeriods"] = 600
        with pytest.raises(jsonschema.ValidationError, match="cooldownPeriods"):
            validate_manifest(scaled_object)

    def test_wrong_type_in_crd_kind_fails(self) -> None:
        manifests = render_chart(SCALED_KEDA)
        scaled_object = get(manifests, "ScaledObject", "tl-tasklane-worker")
        scaled_object["spec"]["triggers"][0]["metadata"]["listLength"] = 2
        with pytest.raises(jsonschema.ValidationError):
            validate_manifest(scaled_object)

    def test_crd_kind_metadata_is_checked_as_object_meta(self) -> None:
        manifests = render_chart(SCALED_KEDA)
        trigger_auth = get(manifests, "TriggerAuthentication", "tl-tasklane-redis")
        trigger_auth["metadata"]["labels"]["replicas"] = 3
        with pytest.raises(jsonschema.ValidationError):
            validate_manifest(trigger_auth)

    def test_unknown_kind_fails_instead_of_passing_unchecked(self) -> None:
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
        with pytest.raises(UnknownKindError, match="Widget"):
            validate_manifest(widget)
