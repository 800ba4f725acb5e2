"""The chart-to-local harness resolves manifests as the kubelet does and rewrites only what its
docstring lists; these cases pin the rules the integration test relies on."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from scripts.harness.chart_to_local import ChartToLocalError, Cluster, expand

SERVICE = {
    "kind": "Service",
    "metadata": {"name": "tl-tasklane-redis"},
    "spec": {"ports": [{"port": 6379, "targetPort": "redis"}]},
}
CONFIG = {"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"TASKLANE_STORE": "redis"}}
SECRET = {
    "kind": "Secret",
    "metadata": {"name": "auth"},
    "data": {"password": base64.b64encode(b"s3cret").decode()},
}


def deployment(container: dict[str, object]) -> dict[str, object]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                }
            }
        },
    }


def test_expansion_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"  # left as written, like the kubelet
    assert expand("$$(A)", env) == "$(A)"  # escaped


def test_container_env_resolution_and_rewrites(tmp_path: Path) -> None:
    container = {
        "name": "api",
        "image": "tasklane:0.1.0",
        "command": ["tasklane"],
        "args": ["serve", "--port", "8000", "--schedule", "/tmp/beat"],
        "ports": [{"containerPort": 8000}],
        "envFrom": [{"configMapRef": {"name": "cfg"}}],
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "auth", "key": "password"}},
            },
            {"name": "REDIS_URL", "value": "redis://:$(REDIS_PASSWORD)@tl-tasklane-redis:6379/0"},
            {"name": "OTHER", "value": "tl-tasklane-redis.default.svc.cluster.local"},
        ],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    cluster = Cluster(
        [SERVICE, CONFIG, SECRET, deployment(container)], namespace="default", workdir=tmp_path
    )
    cluster.bind_service("tl-tasklane-redis", {6379: 40001})

    local = cluster.container("Deployment", "app", "api")

    assert local.env["TASKLANE_STORE"] == "redis"
    assert local.env["TASKLANE_LOG_FORMAT"] == "json"  # the image's own ENV
    assert "PATH" not in local.env
    assert local.env["REDIS_URL"] == "redis://:s3cret@127.0.0.1:40001/0"
    assert local.env["OTHER"] == "127.0.0.1"
    port = local.ports[8000]
    assert local.argv[1:4] == ["serve", "--port", str(port)]
    assert local.argv[-1] == str(local.mounts["/tmp"] / "beat")
    assert local.argv[0].endswith("/tasklane")


def test_unknown_command_or_missing_secret_fails(tmp_path: Path) -> None:
    no_command = deployment({"name": "x", "image": "x:1", "command": ["gunicorn"], "args": []})
    with pytest.raises(ChartToLocalError, match="no command 'gunicorn'"):
        Cluster([no_command], namespace="default", workdir=tmp_path).container(
            "Deployment", "app", "x"
        )
    missing = deployment(
        {
            "name": "x",
            "image": "x:1",
            "command": ["tasklane"],
            "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
        }
    )
    with pytest.raises(ChartToLocalError, match="no Secret 'nope'"):
        Cluster([missing], namespace="default", workdir=tmp_path).container(
            "Deployment", "app", "x"
        )
