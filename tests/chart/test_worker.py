"""The worker Deployment: who owns its replica count, the command it runs, how it is probed
and how long it may take to stop."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from tests.chart.helpers import (
    KEDA_API,
    SCALED,
    Manifest,
    container,
    env_map,
    get,
    render_chart,
    render_error,
)

WORKER = "tl-tasklane-worker"


def _worker_values(**worker: Any) -> dict[str, Any]:
    return {"celery": {"enabled": True, "worker": worker}}


def _worker(values: dict[str, Any], api_versions: tuple[str, ...] = ()) -> Manifest:
    return get(render_chart(values, api_versions=api_versions), "Deployment", WORKER)


NO_KEDA = {"keda": {"enabled": False}}
HPA = {"keda": {"enabled": False}, "hpa": {"enabled": True}}


@pytest.mark.parametrize(
    ("worker", "api_versions", "expected"),
    [
        pytest.param({}, (KEDA_API,), None, id="keda-owns"),
        pytest.param({"replicas": 3}, (KEDA_API,), None, id="keda-owns-even-when-set"),
        pytest.param({"autoscaling": HPA}, (), None, id="hpa-owns"),
        pytest.param({"replicas": 3, "autoscaling": HPA}, (), None, id="hpa-owns-even-when-set"),
        pytest.param({"autoscaling": NO_KEDA}, (), None, id="default-null"),
        pytest.param({}, (), None, id="keda-absent-default-null"),
        pytest.param({"replicas": 3, "autoscaling": NO_KEDA}, (), 3, id="set-autoscaling-off"),
        pytest.param({"replicas": 0, "autoscaling": NO_KEDA}, (), 0, id="set-to-zero"),
        pytest.param({"replicas": 2}, (), 2, id="set-keda-not-in-cluster"),
    ],
)
def test_replicas_written_only_when_set_and_no_autoscaler_owns_them(
    worker: dict[str, Any], api_versions: tuple[str, ...], expected: int | None
) -> None:
    """DESIGN §6: a chart-owned spec.replicas conflicts with kubectl scale under Helm 4's
    server-side apply and fights KEDA/HPA; absent, upgrades keep whatever count was set."""
    spec = _worker(_worker_values(**worker), api_versions)["spec"]
    assert spec.get("replicas") == expected


@pytest.mark.parametrize(
    ("queues", "concurrency"), [(["heavy", "light"], 2), (["reports", "bulk-mail"], 7)]
)
def test_command_consumes_the_queues_with_the_concurrency(
    queues: list[str], concurrency: int
) -> None:
    worker = container(_worker(_worker_values(queues=queues, concurrency=concurrency)), "worker")
    assert [*worker["command"], *worker["args"]] == [
        "tasklane",
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
    ]


def test_container_is_named_worker_and_exposes_metrics() -> None:
    """KEDA's envSourceContainerName and the PodMonitor's port name depend on these names."""
    worker = container(_worker(SCALED), "worker")
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    env = env_map(worker)
    assert env["TASKLANE_WORKER_METRICS_PORT"]["value"] == "9464"
    assert env["REDIS_ADDRESS"]["value"] == "tl-tasklane-redis:6379"


def test_worker_gets_no_api_token() -> None:
    """Least privilege: only the api checks bearer tokens."""
    assert "TASKLANE_API_TOKEN" not in env_map(container(_worker(SCALED), "worker"))


def test_liveness_from_heartbeat_and_no_readiness() -> None:
    """A worker takes no traffic, so readiness means nothing; liveness is its own heartbeat."""
    worker = container(_worker(SCALED), "worker")
    assert "readinessProbe" not in worker
    heartbeat = ["tasklane", "status", "--worker"]
    assert worker["livenessProbe"]["exec"]["command"] == heartbeat
    assert worker["startupProbe"]["exec"]["command"] == heartbeat


@pytest.mark.parametrize(("timeout", "expected"), [(300, 360), (900, 960)])
def test_grace_period_outlasts_the_longest_task(timeout: int, expected: int) -> None:
    """Warm shutdown lets running tasks finish: timeout + Celery's 30 s hard-limit margin."""
    values = {**_worker_values(), "tasks": {"timeoutSeconds": timeout}}
    values["celery"]["worker"]["autoscaling"] = {"keda": {"cooldownPeriod": expected + 60}}
    grace = _worker(values)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == expected
    assert grace >= timeout + 30


def test_the_chart_passes_the_apps_hard_limit_margin_and_sizes_the_grace_from_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One number for Celery's hard-limit margin: the chart hands its own to the workers
    (TASKLANE_TIME_LIMIT_MARGIN), it equals the app's default, and the grace period and the
    render-time check are computed from it."""
    manifests = render_chart(SCALED)
    passed = get(manifests, "ConfigMap", "tl-tasklane-config")["data"]["TASKLANE_TIME_LIMIT_MARGIN"]
    margin = int(passed)
    assert margin == Settings.model_fields["time_limit_margin"].default
    monkeypatch.setenv("TASKLANE_TIME_LIMIT_MARGIN", str(margin + 7))
    assert Settings().time_limit_margin == margin + 7  # the workers read the variable
    grace = get(manifests, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] == 300 + margin + 30
    message = render_error(_worker_values(terminationGracePeriodSeconds=300 + margin - 1))
    assert f"at least {300 + margin} s" in message
    assert f"Celery's {margin} s hard-limit margin" in message


def test_explicit_grace_period_is_used() -> None:
    spec = _worker(_worker_values(terminationGracePeriodSeconds=400))["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 400


def test_grace_period_shorter_than_a_task_fails() -> None:
    message = render_error(_worker_values(terminationGracePeriodSeconds=200))
    assert "celery.worker.terminationGracePeriodSeconds=200 is too short" in message
    assert "at least 330 s" in message


def test_pdb_evicts_one_worker_at_a_time() -> None:
    pdb = get(render_chart(SCALED), "PodDisruptionBudget", WORKER)
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = _worker(SCALED)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


class TestCpuHpa:
    """The CPU HorizontalPodAutoscaler, for clusters without KEDA."""

    def test_targets_the_worker_deployment(self) -> None:
        values = _worker_values(autoscaling={**HPA, "hpa": {"enabled": True, "maxReplicas": 6}})
        hpa = get(render_chart(values), "HorizontalPodAutoscaler", WORKER)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": WORKER,
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"

    def test_needs_a_cpu_request(self) -> None:
        # null deletes the default request (Helm merges maps, so leaving it out would keep it).
        values = _worker_values(autoscaling=HPA, resources={"requests": {"cpu": None}})
        assert "needs celery.worker.resources.requests.cpu" in render_error(values)

    def test_min_above_max_fails(self) -> None:
        values = _worker_values(
            autoscaling={**HPA, "hpa": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}
        )
        assert "hpa.minReplicas must not exceed maxReplicas" in render_error(values)


class TestKedaAndHpaExclusive:
    """Two autoscalers on one Deployment fight; both the schema and the templates refuse."""

    BOTH = _worker_values(autoscaling={"keda": {"enabled": True}, "hpa": {"enabled": True}})

    def test_schema_rejects_both(self) -> None:
        message = render_error(self.BOTH)
        assert "/celery/worker/autoscaling/keda/enabled" in message
        assert "value must be false" in message

    def test_template_fails_with_an_explanation(self) -> None:
        """The template check stands when the schema is skipped (--skip-schema-validation)."""
        message = render_error(self.BOTH, skip_schema_validation=True)
        assert "keda.enabled and hpa.enabled are both true" in message
        assert "celery.worker.autoscaling.keda.enabled=false" in message
