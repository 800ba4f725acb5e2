"""Secret values (the Redis password, the api token) live only in Secrets: pods reference them,
URLs carry $(REDIS_PASSWORD) for the kubelet to expand, KEDA reads the Secret itself. A value the
user gives (api.token) is rendered as given; a value nobody gives is never rendered: the hook
Job generates it once in the cluster (`tasklane secrets ensure`, tests/unit/test_ensure_secrets)."""

from __future__ import annotations

import base64
import json

import pytest

from app.cli import build_parser
from tests.chart.helpers import (
    KEDA_API,
    Manifest,
    container,
    containers,
    env_map,
    find,
    get,
    pod_spec,
    render_chart,
)

TOKEN = "tok-3b1f0c9e-chart-test-token"
SCALED_WITH_TOKEN = {
    "celery": {"enabled": True},
    "api": {"token": TOKEN},
    "metrics": {"grafanaDashboard": {"enabled": True}},
}
WORKLOADS = ("Deployment", "StatefulSet")
JOB = "tl-tasklane-secrets"
HOOK_PHASES = "pre-install,pre-upgrade"


def _secret_value(manifests: list[Manifest], name: str, key: str) -> str:
    return base64.b64decode(get(manifests, "Secret", name)["data"][key]).decode()


@pytest.fixture
def scaled() -> list[Manifest]:
    """Scaled mode with KEDA, an explicit api token and the dashboard ConfigMap."""
    return render_chart(SCALED_WITH_TOKEN, api_versions=[KEDA_API])


def _job(manifests: list[Manifest]) -> Manifest:
    return get(manifests, "Job", JOB)


def _generated(manifests: list[Manifest]) -> list[tuple[str, dict[str, int]]]:
    """What the hook Job's command line asks for, parsed by the real `tasklane` parser: the
    chart and the command cannot disagree on the syntax."""
    (spec,) = containers(_job(manifests))
    assert spec["command"] == ["tasklane"]
    args = build_parser().parse_args(spec["args"])
    assert (args.command, args.secrets_action) == ("secrets", "ensure")
    return args.secrets


def test_a_given_token_is_rendered_as_given_and_the_password_is_generated_in_the_cluster(
    scaled: list[Manifest],
) -> None:
    assert _secret_value(scaled, "tl-tasklane-api-token", "token") == TOKEN
    assert not find(scaled, "Secret", "tl-tasklane-redis-auth")
    assert _generated(scaled) == [("tl-tasklane-redis-auth", {"password": 32})]


def test_nothing_given_renders_no_secret_and_generates_both() -> None:
    manifests = render_chart({"celery": {"enabled": True}})
    assert not find(manifests, "Secret")
    assert _generated(manifests) == [
        ("tl-tasklane-api-token", {"token": 40}),
        ("tl-tasklane-redis-auth", {"password": 32}),
    ]


@pytest.mark.parametrize("kind", ["ConfigMap", "ScaledObject", "TriggerAuthentication", *WORKLOADS])
def test_no_secret_value_outside_secrets(scaled: list[Manifest], kind: str) -> None:
    """The given token, plain or base64, appears in no ConfigMap, KEDA object or pod spec."""
    secrets = [TOKEN, base64.b64encode(TOKEN.encode()).decode()]
    objects = find(scaled, kind)
    assert objects, f"scaled mode renders no {kind}"
    for manifest in objects:
        text = json.dumps(manifest)
        assert not [s for s in secrets if s in text], f"{kind}/{manifest['metadata']['name']}"


@pytest.mark.parametrize("component", ["api", "worker", "beat"])
def test_password_is_defined_before_the_urls_that_use_it(
    scaled: list[Manifest], component: str
) -> None:
    """Kubernetes expands $(VAR) only from entries earlier in the same env list."""
    app = container(get(scaled, "Deployment", f"tl-tasklane-{component}"), component)
    names = [entry["name"] for entry in app["env"]]
    env = env_map(app)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "tl-tasklane-redis-auth",
        "key": "password",
    }
    for url in ("REDIS_URL", "CELERY_BROKER_URL"):
        assert "$(REDIS_PASSWORD)" in env[url]["value"]
        assert names.index("REDIS_PASSWORD") < names.index(url)


def test_redis_requires_the_password_the_clients_use(scaled: list[Manifest]) -> None:
    redis = container(get(scaled, "StatefulSet", "tl-tasklane-redis"), "redis")
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert env_map(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "tl-tasklane-redis-auth",
        "key": "password",
    }


def test_api_token_reaches_only_the_api(scaled: list[Manifest]) -> None:
    api = env_map(container(get(scaled, "Deployment", "tl-tasklane-api"), "api"))
    assert api["TASKLANE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "tl-tasklane-api-token",
        "key": "token",
    }
    for name in ("tl-tasklane-worker", "tl-tasklane-beat"):
        for spec in containers(get(scaled, "Deployment", name)):
            assert "TASKLANE_API_TOKEN" not in env_map(spec)


def test_single_mode_generates_only_the_token() -> None:
    assert _generated(render_chart()) == [("tl-tasklane-api-token", {"token": 40})]


def test_existing_secrets_replace_the_generated_ones() -> None:
    values = {
        "celery": {"enabled": True},
        "api": {"existingTokenSecret": "my-token", "existingTokenSecretKey": "t"},
        "redis": {"auth": {"existingSecret": "my-redis", "existingSecretKey": "pw"}},
    }
    manifests = render_chart(values, api_versions=[KEDA_API])
    assert not find(manifests, "Secret")
    # Nothing to generate: no hook Job, no Role to create Secrets.
    assert not find(manifests, "Job")
    assert not find(manifests, "Role", JOB)
    api = env_map(container(get(manifests, "Deployment", "tl-tasklane-api"), "api"))
    assert api["TASKLANE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-token",
        "key": "t",
    }
    assert api["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}
    (ref,) = get(manifests, "TriggerAuthentication", "tl-tasklane-redis")["spec"]["secretTargetRef"]
    assert (ref["name"], ref["key"]) == ("my-redis", "pw")


class TestSecretsJob:
    """The hook that generates the Secrets: before anything mounts them, least privilege, the
    chart's security defaults."""

    def test_runs_before_install_and_upgrade_after_its_rbac(self) -> None:
        manifests = render_chart(SCALED_WITH_TOKEN)
        hooks = {
            (m["kind"], m["metadata"]["name"]): m["metadata"].get("annotations", {})
            for m in manifests
            if "helm.sh/hook" in m["metadata"].get("annotations", {})
        }
        assert set(hooks) == {
            ("Job", JOB),
            ("ServiceAccount", JOB),
            ("Role", JOB),
            ("RoleBinding", JOB),
        }
        for hook in hooks.values():
            assert hook["helm.sh/hook"] == HOOK_PHASES
            assert hook["helm.sh/hook-delete-policy"] == ("before-hook-creation,hook-succeeded")
        job_weight = int(hooks[("Job", JOB)]["helm.sh/hook-weight"])
        for kind in ("ServiceAccount", "Role", "RoleBinding"):
            assert int(hooks[(kind, JOB)]["helm.sh/hook-weight"]) < job_weight

    def test_role_reads_and_patches_only_the_generated_secrets(self) -> None:
        manifests = render_chart({"celery": {"enabled": True}})
        rules = get(manifests, "Role", JOB)["rules"]
        assert rules == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": ["tl-tasklane-api-token", "tl-tasklane-redis-auth"],
                "verbs": ["get", "patch"],
            },
        ]
        binding = get(manifests, "RoleBinding", JOB)
        assert binding["roleRef"]["name"] == JOB
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": JOB, "namespace": "default"}
        ]
        pod = pod_spec(_job(manifests))
        assert pod["serviceAccountName"] == JOB
        assert pod["automountServiceAccountToken"] is True
        assert pod["restartPolicy"] == "Never"

    def test_created_secrets_are_kept_by_helm_and_argo_cd(self) -> None:
        """Upgrading from a chart version that rendered the Secrets must not delete them (Helm
        reads helm.sh/resource-policy on the live object), nor may Argo CD prune them."""
        (spec,) = containers(_job(render_chart()))
        args = build_parser().parse_args(spec["args"])
        assert dict(args.annotation) == {
            "helm.sh/resource-policy": "keep",
            "argocd.argoproj.io/sync-options": "Prune=false",
            "argocd.argoproj.io/compare-options": "IgnoreExtraneous",
        }
        assert args.namespace == "default"

    def test_an_existing_token_secret_needs_no_job_in_single_mode(self) -> None:
        for api in ({"existingTokenSecret": "mine"}, {"token": TOKEN}):
            manifests = render_chart({"api": api})
            assert not find(manifests, "Job")
            assert not find(manifests, "ServiceAccount", JOB)


class TestChecksums:
    """checksum/secret hashes only what the user gave: nothing random can restart pods."""

    @staticmethod
    def _annotations(values: dict, name: str = "tl-tasklane-api") -> dict[str, str]:
        return get(render_chart(values), "Deployment", name)["spec"]["template"]["metadata"][
            "annotations"
        ]

    def test_no_secret_checksum_for_generated_secrets(self) -> None:
        for name in ("tl-tasklane-api", "tl-tasklane-worker", "tl-tasklane-beat"):
            assert "checksum/secret" not in self._annotations({"celery": {"enabled": True}}, name)
        redis = get(render_chart({"celery": {"enabled": True}}), "StatefulSet", "tl-tasklane-redis")
        assert "checksum/secret" not in (
            redis["spec"]["template"]["metadata"].get("annotations") or {}
        )

    def test_a_given_token_rolls_the_pods_when_it_changes(self) -> None:
        first = self._annotations({"api": {"token": TOKEN}})["checksum/secret"]
        assert self._annotations({"api": {"token": TOKEN}})["checksum/secret"] == first
        assert self._annotations({"api": {"token": TOKEN + "x"}})["checksum/secret"] != first
