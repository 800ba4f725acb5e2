"""k8s/ is generated from the chart (scripts/render-k8s): no drift, and `kubectl kustomize`
of each overlay rebuilds exactly what the chart renders for that mode (Secrets and checksum
annotations aside, which the script leaves out on purpose)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "render-k8s"


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("render_k8s", str(SCRIPT))
    spec = importlib.util.spec_from_loader("render_k8s", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def render_k8s() -> ModuleType:
    return load_script()


def kustomize(render_k8s: ModuleType, overlay: str) -> list[dict[str, Any]]:
    kubectl = Path(render_k8s.helm()).with_name("kubectl")
    out = subprocess.run(
        [str(kubectl), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_k8s_folder_matches_the_chart() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("overlay", "values_name"), [("single", "BASE_VALUES"), ("scaled", "SCALED_VALUES")]
)
def test_each_overlay_builds_the_charts_objects(
    render_k8s: ModuleType, overlay: str, values_name: str
) -> None:
    built = by_key(kustomize(render_k8s, overlay))
    expected = by_key(render_k8s.render(getattr(render_k8s, values_name)))
    assert set(built) == set(expected)
    for key, obj in expected.items():
        assert built[key] == obj, key


def test_no_secret_or_secret_value_is_committed(render_k8s: ModuleType) -> None:
    for path in (REPO / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path
    scaled = by_key(kustomize(render_k8s, "scaled"))
    secret_refs = {
        (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        for obj in scaled.values()
        if obj["kind"] in ("Deployment", "StatefulSet")
        for container in obj["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if (ref := env.get("valueFrom", {})) and "secretKeyRef" in ref
    }
    readme = (REPO / "k8s" / "README.md").read_text()
    for name, key in secret_refs:  # every Secret the pods need is explained
        assert f"secret generic {name}" in readme, name
        assert f"--from-literal={key}=" in readme, key
