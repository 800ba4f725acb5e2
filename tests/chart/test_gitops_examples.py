"""The Argo CD Application and Flux HelmRelease in charts/tasklane/README.md: valid YAML, aimed
at this chart, and their values render (twice, to the same bytes: what a GitOps tool needs)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.chart.helpers import CHART_DIR, render_chart, run_helm

README = CHART_DIR / "README.md"


def _documents() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def _example(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in _documents() if doc.get("kind") == kind]
    return found


def _values(kind: str) -> dict[str, Any]:
    example = _example(kind)
    if kind == "Application":
        source = example["spec"]["source"]
        assert source["path"] == "charts/tasklane"
        return source["helm"]["valuesObject"]
    chart = example["spec"]["chart"]["spec"]
    assert chart["chart"] == "./charts/tasklane"
    return example["spec"]["values"]


@pytest.mark.parametrize("kind", ["Application", "HelmRelease"])
def test_example_values_render(kind: str, tmp_path: Any) -> None:
    manifests = render_chart(_values(kind))
    assert any(m["kind"] == "Deployment" for m in manifests)
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(_values(kind)))
    args = ("template", "tl", str(CHART_DIR), "--values", str(values_file))
    assert run_helm(*args) == run_helm(*args)


def test_argo_cd_example_renders_the_scaledobject_offline() -> None:
    """Argo CD renders without the cluster's API list: keda.force makes the ScaledObject."""
    manifests = render_chart(_values("Application"))
    assert any(m["kind"] == "ScaledObject" for m in manifests)
