"""Object names and labels: <release>-tasklane-<component>, standard labels everywhere."""

from __future__ import annotations

import pytest

from tests.chart.helpers import SCALED_KEDA, Manifest, render_chart

STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
}


def _names(manifests: list[Manifest]) -> set[str]:
    return {m["metadata"]["name"] for m in manifests}


def test_fullname_never_collapses() -> None:
    """Even a release named "tasklane" gets tasklane-tasklane-*: names stay predictable."""
    names = _names(render_chart(SCALED_KEDA, name="tasklane"))
    assert {"tasklane-tasklane-api", "tasklane-tasklane-worker", "tasklane-tasklane-beat"} <= names
    assert "tasklane-tasklane-redis" in names


def test_fullname_override() -> None:
    names = _names(render_chart({**SCALED_KEDA, "fullnameOverride": "jobs"}))
    assert {"jobs-api", "jobs-worker", "jobs-beat", "jobs-redis", "jobs-redis-headless"} <= names


def test_long_release_names_still_make_dns_labels() -> None:
    release = "r" * 53  # Helm's longest release name
    for manifest in render_chart(SCALED_KEDA, name=release):
        assert len(manifest["metadata"]["name"]) <= 63, manifest["metadata"]["name"]


def test_every_object_has_the_standard_labels() -> None:
    manifests = render_chart(SCALED_KEDA)
    for manifest in manifests:
        missing = STANDARD_LABELS - manifest["metadata"]["labels"].keys()
        assert not missing, f"{manifest['kind']}/{manifest['metadata']['name']}: {missing}"


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_selectors_are_the_stable_subset_of_pod_labels(kind: str) -> None:
    """Selectors are immutable: they must hold only labels that never change (no version)."""
    for workload in (m for m in render_chart(SCALED_KEDA) if m["kind"] == kind):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
