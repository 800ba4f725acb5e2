"""The chart's Grafana dashboard and alert rules, checked without a cluster: the dashboard is
importable and every query reads only DESIGN.md §5 series filtered by namespace and release;
the rules pass `promtool check rules`, and `promtool test rules` (Prometheus' own evaluator)
shows each alert firing on synthetic series of an unhealthy system and staying quiet on healthy
ones. tests/integration/test_prometheus_dashboard.py runs the same queries against live data."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import (
    CONTRACT_FAMILIES,
    CONTRACT_SERIES,
    KUBE_REPLICAS,
    RULES_PATH,
    PanelTarget,
    alert_rules,
    family,
    label_values_query,
    load_dashboard,
    load_rule_groups,
    metric_names,
    panel_targets,
    panels,
    range_windows,
    selectors,
    substitute,
    template_variables,
    variable_query,
)

DASHBOARD = load_dashboard()
TARGETS = panel_targets(DASHBOARD)
ALERTS = alert_rules()
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTERS = {("namespace", "=~", "$namespace"), ("release", "=~", "$release")}


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool (Debian's `prometheus` package; `make test` installs it)."""
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(binary).exists():
        pytest.fail("promtool is not installed: run `make test` (it installs prometheus)")
    return binary


# -- the PromQL reader the checks below rely on ------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (task) (rate(a_total{x="{b}", y=~"c|d"}[$__rate_interval]))', ["a_total"]),
        ("sum(rate(a_total[5m])) by (le) / ignoring (status) group_left b", ["a_total", "b"]),
        ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m])))", ["h_bucket"]),
        (
            'label_replace(k{d=~"$r-w"}, "release", "$1", "d", "(.*)") or max without (q) (w)',
            ["k", "w"],
        ),
        ("deriv(max by (q) (g)[5m:30s]) > 0 and on (q) g > 0 unless h offset 5m", ["g", "g", "h"]),
        ('count_values("v", x) > bool 1e3 or topk(3, y:recorded)', ["x", "y:recorded"]),
        ('{__name__=~"tasklane_.+"}', [""]),
    ],
)
def test_selectors_finds_each_metric_name_and_nothing_else(expr: str, expected: list[str]) -> None:
    assert [selector.metric for selector in selectors(expr)] == expected


def test_selectors_keeps_label_matchers_of_each_selector() -> None:
    (selector,) = selectors('rate(a{namespace=~"$namespace", status!="x\\"y"}[5m])')
    assert selector.label_matchers == {
        ("namespace", "=~", "$namespace"),
        ("status", "!=", 'x\\"y'),
    }


def test_substitute_replaces_grafana_variables_but_not_capture_references() -> None:
    expr = 'label_replace(a{n=~"$namespace"}[${__rate_interval}], "r", "$1", "d", "(.*)")'
    assert substitute(expr, {"namespace": "default", "__rate_interval": "1m"}) == (
        'label_replace(a{n=~"default"}[1m], "r", "$1", "d", "(.*)")'
    )
    with pytest.raises(KeyError, match="release"):
        substitute("a{r=~'$release'}", {})


# -- the dashboard -----------------------------------------------------------------------------


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    assert DASHBOARD["schemaVersion"] >= 36
    assert DASHBOARD["uid"] == "tasklane"
    assert DASHBOARD["title"]
    assert DASHBOARD["id"] is None, "a fixed id clashes with existing dashboards on import"
    ids = [panel["id"] for panel in panels(DASHBOARD)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels(DASHBOARD):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the grid"
        assert grid["h"] > 0
        assert grid["w"] > 0


def test_datasource_is_a_template_variable_of_prometheus_type() -> None:
    variable = template_variables(DASHBOARD)["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


@pytest.mark.parametrize("panel", list(panels(DASHBOARD)), ids=lambda panel: panel["title"])
def test_every_panel_has_a_query_and_uses_the_datasource_variable(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "a panel without a query shows nothing"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE, target["refId"]
        assert target["expr"].strip(), target["refId"]


@pytest.mark.parametrize("name", ["namespace", "release"])
def test_namespace_and_release_are_multi_value_query_variables_on_tasklane_series(
    name: str,
) -> None:
    variable = template_variables(DASHBOARD)[name]
    assert variable["type"] == "query"
    assert variable["datasource"] == DATASOURCE
    assert variable["multi"]
    assert variable["includeAll"]
    # "All" as a regex, not Grafana's expansion into every value (URL length, stale lists).
    assert variable["allValue"] == ".*"
    match, label = label_values_query(variable_query(variable))
    assert label == name
    (selector,) = selectors(match)
    names = {value for key, op, value in selector.label_matchers if key == "__name__"}
    assert selector.metric.startswith("tasklane_") or names == {"tasklane_.+"}


def test_release_choices_follow_the_chosen_namespace() -> None:
    match, _ = label_values_query(variable_query(template_variables(DASHBOARD)["release"]))
    (selector,) = selectors(match)
    assert ("namespace", "=~", "$namespace") in selector.label_matchers


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.label)
def test_panel_queries_read_only_contract_series(target: PanelTarget) -> None:
    names = metric_names(target.expr)
    assert names, "no metric in the query"
    assert names <= CONTRACT_SERIES | {KUBE_REPLICAS}, names - CONTRACT_SERIES


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.label)
def test_panel_queries_filter_every_series_by_namespace_and_release(target: PanelTarget) -> None:
    for selector in selectors(target.expr):
        if selector.metric == KUBE_REPLICAS:
            # kube-state-metrics knows the Deployment, not the Helm release label.
            assert ("namespace", "=~", "$namespace") in selector.label_matchers
            deployment = {
                v for k, op, v in selector.label_matchers if (k, op) == ("deployment", "=~")
            }
            assert any("$release" in value for value in deployment), selector
        else:
            assert selector.label_matchers >= FILTERS, selector


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.label)
def test_panel_rate_windows_are_grafanas_rate_interval(target: PanelTarget) -> None:
    assert all(window == "$__rate_interval" for window in range_windows(target.expr))


def test_dashboard_shows_every_contract_metric() -> None:
    shown = {family(name) for target in TARGETS for name in metric_names(target.expr)}
    assert CONTRACT_FAMILIES - shown == set()


REPLICAS_TARGET = next(t for t in TARGETS if KUBE_REPLICAS in metric_names(t.expr))


def test_worker_replicas_series_says_where_its_number_comes_from() -> None:
    assert "kube-state-metrics" in REPLICAS_TARGET.legend
    assert "live workers" in REPLICAS_TARGET.legend


def _replicas(deployment: str, value: int) -> dict[str, str]:
    """kube-state-metrics' series: the Deployment's namespace and name, no release label."""
    return {
        "series": f'{KUBE_REPLICAS}{{namespace="default",deployment="{deployment}"}}',
        "values": f"{value}x5",
    }


def _live(release: str, queue: str, value: int) -> dict[str, str]:
    return {
        "series": f'tasklane_workers_available{{namespace="default",release="{release}",'
        f'queue="{queue}",instance="api-0"}}',
        "values": f"{value}x5",
    }


#: name → (the $release Grafana substitutes, input series, expected value). Grafana writes a
#: multi-value selection into a regex as (a|b).
REPLICAS_CASES: dict[str, tuple[str, list[dict[str, str]], float]] = {
    "kube-state-metrics wins over heartbeats": (
        "tl",
        [_replicas("tl-tasklane-worker", 3), _live("tl", "heavy", 1), _live("tl", "light", 1)],
        3,
    ),
    "no kube-state-metrics: live workers of the most-served queue": (
        "tl",
        [_live("tl", "heavy", 2), _live("tl", "light", 1)],
        2,
    ),
    "worker pools: every pool's Deployment counts": (
        "tl",
        [
            _replicas("tl-tasklane-worker", 1),
            _replicas("tl-tasklane-worker-heavy", 2),
            _replicas("tl-tasklane-worker-light", 3),
            _live("tl", "heavy", 1),
        ],
        6,
    ),
    "release named like the chart": (
        "tasklane",
        [_replicas("tasklane-tasklane-worker", 4), _live("tasklane", "heavy", 1)],
        4,
    ),
    # fullnameOverride renames the Deployment: the heartbeats still give a number.
    "worker Deployment renamed by fullnameOverride": (
        "tl",
        [_replicas("custom-worker", 4), _live("tl", "heavy", 2)],
        2,
    ),
    "two releases, kube-state-metrics for one, heartbeats for the other": (
        "(tl|other)",
        [_replicas("other-tasklane-worker", 2), _live("tl", "heavy", 1)],
        3,
    ),
    "another release's Deployment is not counted": (
        "tl",
        [_replicas("other-tasklane-worker", 5), _live("tl", "heavy", 1)],
        1,
    ),
    # "All" is the regex .* (allValue): tasklane's worker Deployments, not any other *-worker.
    "all releases, another application's worker Deployment beside them": (
        ".*",
        [_replicas("tl-tasklane-worker", 2), _replicas("mailer-worker", 7), _live("tl", "h", 1)],
        2,
    ),
}


@pytest.mark.parametrize("case", REPLICAS_CASES)
def test_worker_replicas_query_prefers_kube_state_metrics_then_live_workers(
    case: str, promtool: str, tmp_path: Path
) -> None:
    """The kube-state-metrics branch cannot run in the integration test (no cluster):
    Prometheus' own evaluator runs it here on synthetic series."""
    release, series, expected = REPLICAS_CASES[case]
    expr = substitute(
        REPLICAS_TARGET.expr,
        {"namespace": "default", "release": release, "__rate_interval": "1m"},
    )
    test_file = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "2m",
                        "exp_samples": [{"labels": "{}", "value": expected}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "replicas-test.yaml"
    path.write_text(yaml.safe_dump(test_file, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the alert rules ---------------------------------------------------------------------------


def test_rule_file_has_the_three_alerts_of_the_design() -> None:
    assert {rule["alert"] for rule in ALERTS} == {
        "TasklaneBacklogGrowing",
        "TasklaneNoLiveWorker",
        "TasklaneTaskFailureRatioHigh",
    }
    assert [group["name"] for group in load_rule_groups()] == ["tasklane"]


@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: rule["alert"])
def test_alert_reads_only_tasklane_series_and_tells_what_to_do(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names
    assert names <= {name for name in CONTRACT_SERIES if name.startswith("tasklane_")}
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert {"summary", "description", "runbook"} <= rule["annotations"].keys()
    # Every aggregation keeps namespace and release: the alert says which release is affected.
    for clause in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
        assert {"namespace", "release"} <= {label.strip() for label in clause.split(",")}


def test_promtool_check_rules_accepts_the_rule_file(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES_PATH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    """One promtool input series in namespace "default", release "tl"."""
    all_labels = {"namespace": "default", "release": "tl", **labels}
    selector = ",".join(f'{key}="{value}"' for key, value in all_labels.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def _fires(alert: str, at: str, **labels: str) -> dict[str, Any]:
    """An alert_rule_test expecting `alert` firing at `at` with exactly these labels."""
    severity = next(rule["labels"]["severity"] for rule in ALERTS if rule["alert"] == alert)
    expected = {"namespace": "default", "release": "tl", "severity": severity, **labels}
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": expected}]}


def _quiet(alert: str, *times: str) -> list[dict[str, Any]]:
    """alert_rule_tests expecting `alert` not firing at any of `times`."""
    return [{"eval_time": at, "alertname": alert, "exp_alerts": []} for at in times]


QUEUE = "tasklane_queue_length"
WORKERS = "tasklane_workers_available"
FINISHED = "tasklane_tasks_finished_total"

#: name → (input series, alert_rule_test entries); the evaluation interval is 1 minute.
SCENARIOS: dict[str, tuple[list[dict[str, str]], list[dict[str, Any]]]] = {
    # Two api pods report the same queue: the alert is one per queue, not one per pod.
    "backlog grows for 20 minutes": (
        [
            _series(QUEUE, "0+3x30", queue="heavy", instance="api-0"),
            _series(QUEUE, "0+3x30", queue="heavy", instance="api-1"),
            _series(WORKERS, "1x30", queue="heavy", instance="api-0"),
        ],
        [
            *_quiet("TasklaneBacklogGrowing", "10m"),  # growing, but not for 15 minutes yet
            _fires("TasklaneBacklogGrowing", "20m", queue="heavy"),
        ],
    ),
    "a burst that the workers drain": (
        [_series(QUEUE, "0+5x10 50-5x10 0x20", queue="heavy", instance="api-0")],
        _quiet("TasklaneBacklogGrowing", "9m", "14m", "16m", "20m", "30m"),
    ),
    "a steady backlog": (
        [_series(QUEUE, "40x30", queue="light", instance="api-0")],
        _quiet("TasklaneBacklogGrowing", "20m", "30m"),
    ),
    "heavy queue waits with no worker while light is served": (
        [
            _series(QUEUE, "5x20", queue="heavy", instance="api-0"),
            _series(WORKERS, "0x20", queue="heavy", instance="api-0"),
            _series(QUEUE, "5x20", queue="light", instance="api-0"),
            _series(WORKERS, "1x20", queue="light", instance="api-0"),
        ],
        [
            *_quiet("TasklaneNoLiveWorker", "4m"),
            _fires("TasklaneNoLiveWorker", "6m", queue="heavy"),
        ],
    ),
    "backlog and no worker series at all": (
        [_series(QUEUE, "3x20", queue="heavy", instance="api-0")],
        [_fires("TasklaneNoLiveWorker", "6m", queue="heavy")],
    ),
    "backlog with live workers": (
        [
            _series(QUEUE, "50x20", queue="heavy", instance="api-0"),
            _series(WORKERS, "2x20", queue="heavy", instance="api-0"),
        ],
        _quiet("TasklaneNoLiveWorker", "10m", "20m"),
    ),
    "idle pool scaled to zero": (
        [
            _series(QUEUE, "0x20", queue="heavy", instance="api-0"),
            _series(WORKERS, "0x20", queue="heavy", instance="api-0"),
        ],
        _quiet("TasklaneNoLiveWorker", "10m", "20m"),
    ),
    "one task in eleven fails": (
        [
            _series(FINISHED, "0+9x30", task="t", executor="celery", status="SUCCESS"),
            _series(FINISHED, "0+1x30", task="t", executor="celery", status="FAILURE"),
            _series(FINISHED, "0+1x30", task="u", executor="background", status="SUCCESS"),
        ],
        [_fires("TasklaneTaskFailureRatioHigh", "15m")],
    ),
    "one task in fifty fails": (
        [
            _series(FINISHED, "0+49x30", task="t", executor="celery", status="SUCCESS"),
            _series(FINISHED, "0+1x30", task="t", executor="celery", status="FAILURE"),
        ],
        _quiet("TasklaneTaskFailureRatioHigh", "15m", "25m"),
    ),
    "half of too few tasks fail": (
        [
            _series(FINISHED, "0+0.5x30", task="t", executor="celery", status="SUCCESS"),
            _series(FINISHED, "0+0.5x30", task="t", executor="celery", status="FAILURE"),
        ],
        _quiet("TasklaneTaskFailureRatioHigh", "15m", "25m"),
    ),
    # Mass cancellation must not hide failures of the tasks that did run.
    "failures among many cancelled tasks": (
        [
            _series(FINISHED, "0+5x30", task="t", executor="celery", status="SUCCESS"),
            _series(FINISHED, "0+0.5x30", task="t", executor="celery", status="FAILURE"),
            _series(FINISHED, "0+100x30", task="t", executor="celery", status="CANCELLED"),
        ],
        [_fires("TasklaneTaskFailureRatioHigh", "15m")],
    ),
}


def _rules_without_annotations(tmp_path: Path) -> Path:
    """A copy of the rule file without annotations: promtool compares an alert's annotations
    verbatim, and the prose is not what these scenarios test (check rules parses its
    templates)."""
    groups = load_rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def _promtool_test(
    promtool: str,
    tmp_path: Path,
    series: list[dict[str, str]],
    checks: list[dict[str, Any]],
) -> subprocess.CompletedProcess[str]:
    test_file = {
        "rule_files": [str(_rules_without_annotations(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    path = tmp_path / "alerts-test.yaml"
    path.write_text(yaml.safe_dump(test_file, sort_keys=False))
    return subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_promtool_evaluates_the_alert_as_the_scenario_expects(
    scenario: str, promtool: str, tmp_path: Path
) -> None:
    series, checks = SCENARIOS[scenario]
    result = _promtool_test(promtool, tmp_path, series, checks)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rejects_an_expectation_the_rules_contradict(
    promtool: str, tmp_path: Path
) -> None:
    """The scenarios above can fail: claiming quiet where the alert fires is caught."""
    series, _ = SCENARIOS["heavy queue waits with no worker while light is served"]
    result = _promtool_test(promtool, tmp_path, series, _quiet("TasklaneNoLiveWorker", "6m"))
    assert result.returncode != 0
    assert "TasklaneNoLiveWorker" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_scenario() -> None:
    for rule in ALERTS:
        checks = [check for _, entries in SCENARIOS.values() for check in entries]
        mine = [check for check in checks if check["alertname"] == rule["alert"]]
        assert any(check["exp_alerts"] for check in mine), rule["alert"]
        assert any(not check["exp_alerts"] for check in mine), rule["alert"]
