"""Secret values (the Redis password, the api token) live only in Secrets: pods reference them,
URLs carry $(REDIS_PASSWORD) for the kubelet to expand, KEDA reads the Secret itself."""

from __future__ import annotations

import base64
import json

import pytest

from tests.chart.helpers import (
    KEDA_API,
    Manifest,
    container,
    containers,
    env_map,
    find,
    get,
    render_chart,
)

TOKEN = "tok-3b1f0c9e-chart-test-token"
SCALED_WITH_TOKEN = {
    "celery": {"enabled": True},
    "api": {"token": TOKEN},
    "metrics": {"grafanaDashboard": {"enabled": True}},
}
WORKLOADS = ("Deployment", "StatefulSet")


def _secret_value(manifests: list[Manifest], name: str, key: str) -> str:
    return base64.b64decode(get(manifests, "Secret", name)["data"][key]).decode()


@pytest.fixture
def scaled() -> list[Manifest]:
    """Scaled mode with KEDA, an explicit api token and the dashboard ConfigMap."""
    return render_chart(SCALED_WITH_TOKEN, api_versions=[KEDA_API])


def test_secrets_hold_the_values(scaled: list[Manifest]) -> None:
    assert _secret_value(scaled, "tl-tasklane-api-token", "token") == TOKEN
    password = _secret_value(scaled, "tl-tasklane-redis-auth", "password")
    assert len(password) == 32
    assert password.isalnum()


@pytest.mark.parametrize("kind", ["ConfigMap", "ScaledObject", "TriggerAuthentication", *WORKLOADS])
def test_no_secret_value_outside_secrets(scaled: list[Manifest], kind: str) -> None:
    """Neither value, plain or base64, appears in ConfigMaps, KEDA objects or pod specs."""
    password = _secret_value(scaled, "tl-tasklane-redis-auth", "password")
    secrets = [password, TOKEN, *(base64.b64encode(s.encode()).decode() for s in (password, TOKEN))]
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


def test_generated_token_when_none_given() -> None:
    token = _secret_value(render_chart(), "tl-tasklane-api-token", "token")
    assert len(token) == 40
    assert token.isalnum()


def test_existing_secrets_replace_the_generated_ones() -> None:
    values = {
        "celery": {"enabled": True},
        "api": {"existingTokenSecret": "my-token", "existingTokenSecretKey": "t"},
        "redis": {"auth": {"existingSecret": "my-redis", "existingSecretKey": "pw"}},
    }
    manifests = render_chart(values, api_versions=[KEDA_API])
    assert not find(manifests, "Secret")
    api = env_map(container(get(manifests, "Deployment", "tl-tasklane-api"), "api"))
    assert api["TASKLANE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-token",
        "key": "t",
    }
    assert api["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}
    (ref,) = get(manifests, "TriggerAuthentication", "tl-tasklane-redis")["spec"]["secretTargetRef"]
    assert (ref["name"], ref["key"]) == ("my-redis", "pw")
