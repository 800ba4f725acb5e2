"""The chart's Grafana dashboard and alert rules as tests see them, PromQL read just enough to
name the series an expression selects, and a real `prometheus` server.

    dashboard = load_dashboard()
    for target in panel_targets(dashboard): ...           # every panel's queries
    selectors("sum(rate(x_total{a=\"b\"}[5m]))")           # [Selector(metric="x_total", ...)]
    substitute(expr, {"namespace": "default"})             # Grafana's $var / ${var}
    with PrometheusServer(workdir, targets=[...]) as prom:  # returns once /-/ready answers
        prom.query("up")                                    # the API's JSON body

No Python PromQL parser is installed here, so selectors() is a small tokenizer; its cases are
pinned in tests/unit/test_dashboard_and_alerts.py, and the integration test runs every
expression through the real Prometheus, which rejects anything the tokenizer misread.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

from scripts.harness.processes import REPO_ROOT, free_port, terminate

DASHBOARD_PATH = REPO_ROOT / "charts" / "tasklane" / "dashboards" / "tasklane.json"
RULES_PATH = REPO_ROOT / "charts" / "tasklane" / "alerts" / "tasklane-rules.yaml"

#: DESIGN.md §5, "names are API": the series tasklane exposes, by kind.
COUNTERS = frozenset(
    {
        "tasklane_tasks_submitted_total",
        "tasklane_tasks_finished_total",
        "tasklane_task_retries_total",
        "tasklane_executor_fallbacks_total",
        "tasklane_routing_decisions_total",
        "tasklane_rate_limited_total",
        "http_requests_total",
    }
)
HISTOGRAMS = frozenset(
    {
        "tasklane_task_duration_seconds",
        "tasklane_task_queue_wait_seconds",
        "tasklane_submit_duration_seconds",
        "http_request_duration_seconds",
    }
)
GAUGES = frozenset(
    {
        "tasklane_tasks_in_progress",
        "tasklane_queue_length",
        "tasklane_workers_available",
        "tasklane_broker_up",
        "tasklane_rate_delayed",
    }
)
#: Every metric family of the contract (a histogram by its base name).
CONTRACT_FAMILIES = COUNTERS | HISTOGRAMS | GAUGES
#: Series names a query may select: counters, gauges and each histogram's three series.
CONTRACT_SERIES = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
#: kube-state-metrics' replica count, for "backlog vs worker replicas" (DESIGN.md §5).
KUBE_REPLICAS = "kube_deployment_status_replicas"


def family(series: str) -> str:
    """The metric family a series name belongs to (a histogram's _bucket/_sum/_count → base)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in HISTOGRAMS:
            return base
    return series


# -- PromQL, read just enough ------------------------------------------------------------------

_STRING = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`"""
_TOKEN = re.compile(
    rf"""
      (?P<string>{_STRING})
    | (?P<braces>\{{(?:{_STRING}|[^{{}}"'`])*\}})
    | (?P<range>\[[^\]]*\])
    | (?P<number>\d[\d.]*(?:[eE][+-]?\d+)?[a-zA-Z]*|\.\d+)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<paren>[()])
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
#: Keywords followed by a parenthesised list of label names, not of expressions.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Words that are neither functions nor metric names.
_KEYWORDS = _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


@dataclass(frozen=True, slots=True)
class Selector:
    """One vector selector of an expression: `metric{matchers}` ("" when absent)."""

    metric: str
    matchers: str = ""

    @property
    def label_matchers(self) -> set[tuple[str, str, str]]:
        """The matchers as (label, operator, value) triples, quotes removed."""
        return {
            (found["label"], found["op"], found["value"])
            for found in _MATCHER.finditer(self.matchers)
        }


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of a PromQL expression, in order of appearance.

    Identifiers followed by "(" (or by `by`/`without`) are functions or aggregations; label
    lists after by, without, on, ignoring, group_left and group_right are skipped; strings,
    matchers and range or subquery brackets are single tokens, so nothing inside them is taken
    for a metric name.
    A selector with no name (`{__name__=~"..."}`) comes back with metric "".
    """
    tokens = [
        (match.lastgroup, match.group())
        for match in _TOKEN.finditer(expr)
        if match.lastgroup != "space"
    ]
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        if kind == "braces":
            found.append(Selector("", text[1:-1]))
        elif kind == "ident":
            word = text.lower()
            if word in _LABEL_LISTS and following == ("paren", "("):
                index = _closing_paren(tokens, index + 1)
            elif (
                word in _KEYWORDS
                or following == ("paren", "(")
                or (following[0] == "ident" and following[1].lower() in ("by", "without"))
            ):
                pass  # a keyword, a function, or an aggregation written `sum by (a) (...)`
            elif following[0] == "braces":
                found.append(Selector(text, following[1][1:-1]))
                index += 1
            else:
                found.append(Selector(text))
        index += 1
    return found


def _closing_paren(tokens: Sequence[tuple[str | None, str]], start: int) -> int:
    """Index of the ")" that closes the "(" at `start` (a label list holds no parentheses)."""
    for index in range(start, len(tokens)):
        if tokens[index] == ("paren", ")"):
            return index
    raise ValueError(f"unbalanced label list in {' '.join(text for _, text in tokens)!r}")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects ("" for a selector without a name)."""
    return {selector.metric for selector in selectors(expr)}


def range_windows(expr: str) -> list[str]:
    """The contents of every range or subquery bracket, `[5m:30s]` → "5m:30s"."""
    return [
        text[1:-1] for match in _TOKEN.finditer(expr) if (text := match.group()).startswith("[")
    ]


# -- Grafana ------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)\}|\$(?P<plain>[A-Za-z_]\w*)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with Grafana's `$name` and `${name}` replaced from `values` (a regex capture
    reference such as label_replace's "$1" is not a variable and stays).

    Raises KeyError naming a variable that `values` lacks, so a new dashboard variable cannot
    slip into a query the tests then send to Prometheus half-substituted.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name.isdigit():
            return match.group()
        return values[name]

    return _VARIABLE.sub(replace, expr)


@dataclass(frozen=True, slots=True, kw_only=True)
class PanelTarget:
    """One query of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str
    legend: str
    datasource: Any

    @property
    def label(self) -> str:
        """How test ids and failure messages name it."""
        return f"{self.panel} [{self.ref_id}]"


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict[str, Any]:
    """The dashboard JSON as Grafana imports it."""
    return json.loads(path.read_text())


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_targets(dashboard: Mapping[str, Any]) -> list[PanelTarget]:
    """Every target of every panel, in layout order."""
    return [
        PanelTarget(
            panel=panel.get("title", f"panel {panel.get('id')}"),
            ref_id=target.get("refId", "?"),
            expr=target.get("expr", ""),
            legend=target.get("legendFormat", ""),
            datasource=target.get("datasource"),
        )
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def template_variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$", re.DOTALL)


def label_values_query(query: str) -> tuple[str, str]:
    """(series selector, label) of a Grafana `label_values(selector, label)` variable query."""
    found = _LABEL_VALUES.match(query.strip())
    if found is None:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return found.group("match").strip(), found.group("label")


def variable_query(variable: Mapping[str, Any]) -> str:
    """A query variable's query text, whether stored as a string or as Grafana's object."""
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, Mapping) else str(query or "")


# -- alert rules --------------------------------------------------------------------------------


def load_rule_groups(path: Path = RULES_PATH) -> list[dict[str, Any]]:
    """The `groups` of the rule file, as the chart embeds them into a PrometheusRule."""
    return yaml.safe_load(path.read_text())["groups"]


def alert_rules(path: Path = RULES_PATH) -> list[dict[str, Any]]:
    """Every alerting rule of every group."""
    return [rule for group in load_rule_groups(path) for rule in group["rules"] if "alert" in rule]


# -- a real Prometheus --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """A host:port Prometheus scrapes at /metrics, with the target labels it attaches (in a
    cluster the ServiceMonitor's relabeling adds release and component, Prometheus namespace)."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class PrometheusServer:
    """The real `prometheus` binary (Debian package) on a free loopback port, scraping
    `targets` every second and evaluating `rule_files` every second; the constructor returns
    once /-/ready answers. Its TSDB and log live in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        targets: Sequence[ScrapeTarget],
        rule_files: Sequence[Path] = (),
        start_timeout: float = 30.0,
    ) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise RuntimeError("prometheus is not installed: run `make test` (it installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self._config(targets, rule_files), sort_keys=False))
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                cwd=workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        try:
            self._wait_ready(start_timeout)
        except Exception:
            self.stop()
            raise

    @staticmethod
    def _config(targets: Sequence[ScrapeTarget], rule_files: Sequence[Path]) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": "tasklane",
                    "static_configs": [
                        {"targets": [target.address], "labels": dict(target.labels)}
                        for target in targets
                    ],
                }
            ],
        }

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}:\n{self.log()[-3000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/-/ready").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>: the JSON body, also for a 4xx that carries Prometheus' error."""
        response = self.client.get(f"/api/v1/{path}", params=params)
        return response.json()

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time: {"status": ..., "data" | "error": ...}."""
        return self.api("query", query=expr)

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of `label` on the series `match` selects (what a label_values() variable
        of Grafana asks Prometheus)."""
        body = self.client.get(f"/api/v1/label/{label}/values", params={"match[]": match}).json()
        if body.get("status") != "success":
            raise AssertionError(f"label_values({match}, {label}) failed: {body}")
        return body["data"]

    def targets_health(self) -> dict[str, str]:
        """Scrape health ("up", "down", "unknown") by target address."""
        active = self.api("targets")["data"]["activeTargets"]
        return {target["labels"]["instance"]: target["health"] for target in active}

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its last evaluation's health and error."""
        groups = self.api("rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        self.client.close()
        terminate(self.process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
