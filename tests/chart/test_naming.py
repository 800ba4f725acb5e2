"""Object names and labels: <release>-tasklane-<component>, standard labels everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chart.helpers import CHART_DIR, SCALED_KEDA, Manifest, render_chart

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


#: An object name built in a template instead of by a name helper: "{{ $fullname }}-worker",
#: '{{ include "tasklane.fullname" . }}-api', or printf "%s-..." around the fullname.
INLINE_NAME = re.compile(
    r"(\$\w*|\"tasklane\.[\w.]+\" [.$]\w*) \}\}-[a-z]|printf \"%s-[a-z\"%].*tasklane\.fullname"
)


@pytest.mark.parametrize(
    "template",
    sorted(p for p in (CHART_DIR / "templates").iterdir() if p.name != "_helpers.tpl"),
    ids=lambda p: p.name,
)
def test_templates_take_every_name_from_a_helper(template: Path) -> None:
    """Names live in _helpers.tpl only (tasklane.worker.fullname, ...), so a renamed object
    cannot leave a stale copy in another template, NOTES.txt or the api's env."""
    inline = [
        f"{template.name}:{number}: {line.strip()}"
        for number, line in enumerate(template.read_text().splitlines(), 1)
        if INLINE_NAME.search(line)
    ]
    assert not inline, "\n".join(inline)


def test_inline_name_pattern_catches_the_old_spellings() -> None:
    for line in (
        "  name: {{ $fullname }}-worker",
        '  name: {{ include "tasklane.fullname" . }}-api',
        '{{- $service := printf "%s-api" (include "tasklane.fullname" .) -}}',
    ):
        assert INLINE_NAME.search(line), line
    assert not INLINE_NAME.search('  name: {{ include "tasklane.worker.fullname" . }}')
    assert not INLINE_NAME.search("get deploy {{ $w }} {{ end }}-w")
