"""ServiceMonitor, PodMonitor, PrometheusRule and the Grafana dashboard ConfigMap: the targets
carry the labels the dashboard filters on, and the shipped files reach the cluster unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.helpers import (
    CHART_DIR,
    CI_VALUES_DIR,
    SCALED,
    Manifest,
    container,
    find,
    get,
    pod_labels,
    render_chart,
)

MONITORING = CI_VALUES_DIR / "monitoring.yaml"
DASHBOARD = CHART_DIR / "dashboards" / "tasklane.json"
RULES = CHART_DIR / "alerts" / "tasklane-rules.yaml"
RELEASE = "prod"


@pytest.fixture
def monitored() -> list[Manifest]:
    """ci/monitoring.yaml, released as "prod" so release-name labels are told from defaults."""
    return render_chart(values_files=[MONITORING], name=RELEASE)


def _relabeled(endpoint: dict[str, Any]) -> dict[str, str]:
    """Target labels set by `replace` relabelings without source labels (constant values)."""
    return {
        rule["targetLabel"]: rule["replacement"]
        for rule in endpoint["relabelings"]
        if rule.get("action", "replace") == "replace" and not rule.get("sourceLabels")
    }


def test_dashboard_configmap_carries_the_json_byte_for_byte(monitored: list[Manifest]) -> None:
    """Grafana's own {{ }} and $variables must survive; the file is never templated."""
    configmap = get(monitored, "ConfigMap", "prod-tasklane-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["tasklane.json"] == DASHBOARD.read_text(encoding="utf-8")
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "tasklane"}


def test_prometheusrule_embeds_the_alert_groups(monitored: list[Manifest]) -> None:
    rule = get(monitored, "PrometheusRule", "prod-tasklane")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_servicemonitor_scrapes_the_api_service(monitored: list[Manifest]) -> None:
    monitor = get(monitored, "ServiceMonitor", "prod-tasklane-api")
    service = get(monitored, "Service", "prod-tasklane-api")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert _relabeled(endpoint) == {"release": RELEASE, "component": "api"}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_podmonitor_scrapes_the_worker_pods(monitored: list[Manifest]) -> None:
    monitor = get(monitored, "PodMonitor", "prod-tasklane-worker")
    worker = get(monitored, "Deployment", "prod-tasklane-worker")
    labels = pod_labels(worker)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {port["name"]: port["containerPort"] for port in container(worker, "worker")["ports"]}
    assert ports[endpoint["port"]] == 9464
    assert _relabeled(endpoint) == {"release": RELEASE, "component": "worker"}


def test_selector_labels_match_only_their_component(monitored: list[Manifest]) -> None:
    """The api ServiceMonitor must not pick up Redis's Services, nor the PodMonitor beat pods."""
    service_monitor = get(monitored, "ServiceMonitor", "prod-tasklane-api")
    selector = service_monitor["spec"]["selector"]["matchLabels"].items()
    services = [
        s for s in find(monitored, "Service") if selector <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["prod-tasklane-api"]
    pod_monitor = get(monitored, "PodMonitor", "prod-tasklane-worker")
    selector = pod_monitor["spec"]["selector"]["matchLabels"].items()
    workloads = [d for d in find(monitored, "Deployment") if selector <= pod_labels(d).items()]
    assert [d["metadata"]["name"] for d in workloads] == ["prod-tasklane-worker"]


def test_release_label_omitted_when_unset() -> None:
    values = {**SCALED, "metrics": {"serviceMonitor": {"enabled": True}}}
    monitor = get(render_chart(values), "ServiceMonitor", "tl-tasklane-api")
    assert "release" not in monitor["metadata"]["labels"]


def test_nothing_monitoring_related_by_default() -> None:
    manifests = render_chart(SCALED)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not find(manifests, kind)
    assert not find(manifests, "ConfigMap", "tl-tasklane-dashboard")


def test_podmonitor_needs_workers() -> None:
    assert not find(render_chart({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
