"""Render charts/tasklane with `helm template` and validate every object it produces.

In the spirit of apache/airflow's chart tests: `render_chart(values)` writes the values to a
file, runs helm, drops empty documents and checks each object against its schema before a test
sees it: Kubernetes kinds with kubernetes-validate (strict, Kubernetes 1.33), KEDA and
Prometheus-Operator kinds with the openAPIV3Schema of their CRDs in tests/chart/crds. A kind
with neither schema fails the render instead of passing unchecked.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "tasklane"
CI_VALUES_DIR = CHART_DIR / "ci"
#: The CRDs of the custom kinds the chart renders, vendored from ../shared/crds (a clean clone
#: has no folder beside it). TASKLANE_CRDS_DIR overrides it.
CRDS_DIR = Path(os.environ.get("TASKLANE_CRDS_DIR", REPO / "tests" / "chart" / "crds"))
#: Where the project keeps the originals, when this checkout sits beside it.
SHARED_CRDS_DIR = REPO.parent / "shared" / "crds"
#: The Kubernetes version the chart is verified against (kubernetes-validate ships 1.25-1.37).
KUBERNETES_VERSION = "1.33.0"
KEDA_API = "keda.sh/v1alpha1"
#: Scaled mode, and scaled mode with the ScaledObject rendered whatever the cluster serves.
SCALED: dict[str, Any] = {"celery": {"enabled": True}}
SCALED_KEDA: dict[str, Any] = {
    "celery": {"enabled": True, "worker": {"autoscaling": {"keda": {"force": True}}}}
}

Manifest = dict[str, Any]


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr (where `fail` messages land)."""

    def __init__(self, args: Sequence[str], stderr: str) -> None:
        super().__init__(f"{' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


class UnknownKindError(AssertionError):
    """A rendered object whose kind has no schema here: it would go unchecked."""


@functools.cache
def helm_binary() -> str:
    """Path of a helm 4 binary: the folder scripts/install-tools fills, else what it prints.

    install-tools prefers a fitting helm on PATH and otherwise fetches one, and prints the
    folder holding it as its last line; running it only when the folder is empty keeps the
    common case free of a subprocess per test session.
    """
    folder = Path(os.environ.get("TASKLANE_TOOLS_DIR", REPO / ".cache" / "tools" / "bin"))
    if (folder / "helm").exists():
        return str(folder / "helm")
    result = subprocess.run(
        [str(REPO / "scripts" / "install-tools")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return str(Path(result.stdout.strip().splitlines()[-1]) / "helm")


def run_helm(*args: str) -> str:
    """Run helm with args; its stdout, or HelmError with its stderr."""
    command = [helm_binary(), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode:
        raise HelmError(command, result.stderr)
    return result.stdout


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    values_files: Iterable[str | Path] = (),
    api_versions: Iterable[str] = (),
    name: str = "tl",
    namespace: str = "default",
    show_only: Iterable[str] | None = None,
    skip_schema_validation: bool = False,
    cache: bool = True,
) -> list[Manifest]:
    """The objects `helm template` renders for these values, each validated against its schema.

    values_files are applied before values (as helm's -f then the --values file of values);
    api_versions become --api-versions (e.g. KEDA_API, so the ScaledObject renders as on a
    cluster with KEDA); show_only names templates ("templates/worker-deployment.yaml").
    Results are cached per argument set (every test gets its own deep copy); cache=False
    renders afresh, for tests about what differs between two renders.
    """
    key = json.dumps(
        [
            values or {},
            [str(path) for path in values_files],
            sorted(api_versions),
            name,
            namespace,
            sorted(show_only or ()),
            skip_schema_validation,
        ],
        sort_keys=True,
    )
    return copy.deepcopy(_render_cached(key) if cache else _render(key))


@functools.cache
def _render_cached(key: str) -> tuple[Manifest, ...]:
    return _render(key)


def _render(key: str) -> tuple[Manifest, ...]:
    values, values_files, api_versions, name, namespace, show_only, skip_schema = json.loads(key)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as values_file:
        yaml.safe_dump(values, values_file)
        values_file.flush()
        args = ["template", name, str(CHART_DIR), "--namespace", namespace]
        args += ["--kube-version", KUBERNETES_VERSION]
        for path in values_files:
            args += ["--values", path]
        args += ["--values", values_file.name]
        for api_version in api_versions:
            args += ["--api-versions", api_version]
        for template in show_only:
            args += ["--show-only", template]
        if skip_schema:
            args.append("--skip-schema-validation")
        output = run_helm(*args)
    manifests = tuple(doc for doc in yaml.safe_load_all(output) if doc)
    for manifest in manifests:
        _validate_once(json.dumps(manifest, sort_keys=True))
    return manifests


@functools.cache
def _validate_once(manifest_json: str) -> None:
    """validate_manifest, once per distinct object: most renders repeat most objects, and
    kubernetes-validate reads its schema files on every call."""
    validate_manifest(json.loads(manifest_json))


def render_error(values: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
    """helm's stderr for a render that must fail; AssertionError when it renders instead."""
    try:
        render_chart(values, **kwargs)
    except HelmError as exc:
        return exc.stderr
    raise AssertionError(f"helm template rendered values {values!r} instead of failing")


# -- lookups on rendered objects ------------------------------------------------------------


def find(manifests: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """Objects of this kind (and name, when given)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def get(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    """The one object of this kind and name; AssertionError naming what was rendered."""
    manifests = list(manifests)
    found = find(manifests, kind, name)
    if len(found) != 1:
        rendered = sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)
        raise AssertionError(f"expected one {kind}/{name}, found {len(found)} in {rendered}")
    return found[0]


def pod_spec(manifest: Manifest) -> Manifest:
    """The pod spec of a workload's template."""
    return manifest["spec"]["template"]["spec"]


def pod_labels(manifest: Manifest) -> dict[str, str]:
    """The labels of a workload's pod template (what selectors must match)."""
    return manifest["spec"]["template"]["metadata"]["labels"]


def containers(manifest: Manifest) -> list[Manifest]:
    """Containers (init containers included) of a workload's pod template."""
    pod = manifest["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def container(manifest: Manifest, name: str) -> Manifest:
    """The container of this name in a workload's pod template."""
    (found,) = [c for c in containers(manifest) if c["name"] == name]
    return found


def env_map(container_spec: Manifest) -> dict[str, Manifest]:
    """A container's env entries by name (the whole EnvVar, value or valueFrom)."""
    return {entry["name"]: entry for entry in container_spec.get("env", [])}


# -- schema validation ----------------------------------------------------------------------


def validate_manifest(manifest: Manifest) -> None:
    """Validate one object: CRD schema for custom kinds, kubernetes-validate for the rest.

    Raises jsonschema.ValidationError (or kubernetes_validate.ValidationError) when the object
    breaks its schema, UnknownKindError when no schema knows its kind.
    """
    group_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    crd_validator = crd_validators().get((group_version, kind))
    if crd_validator is not None:
        crd_validator.validate(manifest)
        return
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise UnknownKindError(
            f"{group_version} {kind} has no Kubernetes {KUBERNETES_VERSION} schema and no CRD "
            f"in {CRDS_DIR}: {exc.message}"
        ) from None


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator for every served version of every CRD in CRDS_DIR."""
    paths = sorted(CRDS_DIR.glob("*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no CRDs in {CRDS_DIR} (set TASKLANE_CRDS_DIR)")
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in paths:
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict_crd_schema(version["schema"]["openAPIV3Schema"])
                schema["definitions"] = object_meta_definitions()
                schema["properties"]["metadata"] = {"$ref": f"#/definitions/{OBJECT_META}"}
                schema.setdefault("required", [])
                schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata"})
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(
                    schema
                )
    return validators


def strict_crd_schema(node: Any) -> Any:
    """A CRD's structural schema made as strict as kubernetes-validate's --strict.

    The API server prunes fields a CRD does not declare, silently: a misspelt ScaledObject key
    would vanish instead of failing. So every object with declared properties and no
    additionalProperties gets additionalProperties: false, except where the CRD keeps unknown
    fields (x-kubernetes-preserve-unknown-fields). x-kubernetes-int-or-string becomes
    "integer or string", OpenAPI's nullable adds null; CEL rules (x-kubernetes-validations)
    cannot be evaluated here and are dropped (tests check those invariants directly).
    """
    if isinstance(node, list):
        return [strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: strict_crd_schema(value)
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key not in ("nullable", "description")
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserves = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserves:
        out["additionalProperties"] = False
    return out


OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@functools.cache
def object_meta_definitions() -> dict[str, Any]:
    """ObjectMeta and its meta/v1 parts from kubernetes-validate's strict 1.33 definitions.

    A CRD's schema says only `metadata: {type: object}`; the API server checks metadata as
    ObjectMeta for every kind, so custom objects get the same check here.
    """
    folder = f"v{KUBERNETES_VERSION}-local-strict"
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/{folder}/_definitions.json", KUBERNETES_VERSION
    )["$defs"]
    prefix = OBJECT_META.rsplit(".", 1)[0] + "."
    return {
        key: _rewrite_refs(value) for key, value in definitions.items() if key.startswith(prefix)
    }


def _rewrite_refs(node: Any) -> Any:
    """Point kubernetes-validate's "#/$defs/X" references at the draft-7 "#/definitions/X"."""
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: value.replace("#/$defs/", "#/definitions/") if key == "$ref" else _rewrite_refs(value)
        for key, value in node.items()
    }


def render_notes(
    values: Mapping[str, Any] | None = None, *, name: str = "tl", namespace: str = "default"
) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run: no cluster needed).

    `helm install` has no --api-versions: to see KEDA's notes, set keda.force.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as values_file:
        yaml.safe_dump(dict(values or {}), values_file)
        values_file.flush()
        args = ["install", name, str(CHART_DIR), "--namespace", namespace, "--dry-run=client"]
        args += ["--values", values_file.name]
        output = run_helm(*args)
    _, marker, notes = output.partition("\nNOTES:\n")
    if not marker:
        raise AssertionError(f"helm install --dry-run printed no NOTES:\n{output[-2000:]}")
    return notes
