"""`tasklane status`'s output: the StatusReport (app/status.py reads it) as rich tables for
people or JSON for machines, and the command's exit status (run()).

Written to stdout; without a terminal (a pipe, `kubectl exec` without -t, a test) the width is
fixed at 160 columns and no colour codes are written, so every column stays readable.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.config import Settings
from app.status import StatusReport, StatusUnavailable, collect

#: Width when stdout is not a terminal (rich would otherwise assume 80 and squeeze columns).
PIPE_WIDTH = 160
ROUTE_STYLES = {"celery": "green", "background": "cyan", "unavailable": "bold red"}


def render(report: StatusReport, file: IO[str] | None = None) -> None:
    """Print the report as a heading and one table per section."""
    out = file or sys.stdout
    console = Console(file=out, width=None if out.isatty() else PIPE_WIDTH, highlight=False)
    broker = {True: "up", False: "DOWN", None: "n/a"}[report.broker_up]
    stamp = datetime.fromtimestamp(report.generated_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    console.print(
        f"[bold]tasklane status[/bold]  {escape(report.redis)}  mode {report.mode}, executor "
        f"{report.executor}, broker {broker}  ({stamp})"
    )
    console.print(_workers(report))
    if report.stale_workers:
        console.print(
            f"stale heartbeats (not counted): {escape(', '.join(report.stale_workers))}",
            style="yellow",
        )
    console.print(_queues(report))
    console.print(_routes(report))
    if report.kubernetes.get("enabled"):
        console.print(_kubernetes(report.kubernetes))
    console.print(_failures(report))


def _workers(report: StatusReport) -> Table:
    table = Table(title=f"Live workers ({len(report.workers)})", title_justify="left")
    for column in ("hostname", "queues", "concurrency", "last heartbeat", "version"):
        table.add_column(column, no_wrap=column == "hostname")
    for worker in report.workers:
        table.add_row(
            escape(worker.hostname),
            escape(",".join(worker.queues)) or "-",
            str(worker.concurrency),
            f"{worker.heartbeat_age:.1f}s ago",
            worker.version,
        )
    if not report.workers:
        table.add_row("(none)", "-", "-", "-", "-")
    return table


def _queues(report: StatusReport) -> Table:
    table = Table(title="Queues", title_justify="left")
    for column in ("queue", "waiting", "by priority (0/3/6/9)", "active", "live workers"):
        table.add_column(column)
    for queue in report.queues:
        by_priority = (
            "/".join(str(count) for count in queue.by_priority.values())
            if queue.by_priority is not None
            else "broker unreadable"
        )
        waiting = "?" if queue.waiting is None else str(queue.waiting)
        table.add_row(
            escape(queue.name), waiting, by_priority, str(queue.active), str(queue.workers)
        )
    return table


def _routes(report: StatusReport) -> Table:
    table = Table(title="Task routes now", title_justify="left")
    for column in ("task", "weight", "queue", "pin", "route", "why"):
        table.add_column(column, no_wrap=column == "task")
    for route in report.routes:
        style = ROUTE_STYLES.get(route.route, "")
        table.add_row(
            escape(route.task),
            route.weight,
            escape(route.queue),
            route.pin or "-",
            f"[{style}]{route.route}[/]" if style else route.route,
            route.reason or "-",
        )
    return table


def _kubernetes(info: dict[str, Any]) -> Table:
    table = Table(title=f"Kubernetes (namespace {info['namespace']})", title_justify="left")
    table.add_column("object")
    table.add_column("state")
    if info.get("selector") and not info["pools"]:
        error = info.get("deployment_error")
        state = escape(f"unreadable: {error}") if error else "none found"
        table.add_row(escape(f"Deployments {info['selector']}"), state)
    for pool in info["pools"]:
        _pool_rows(table, pool, several=len(info["pools"]) > 1)
    table.add_row("held at zero", "yes" if info["held_at_zero"] else "no")
    table.add_row(
        "scale-from-zero",
        f"{'on' if info['scale_from_zero'] else 'off'} (from {info['scale_from_zero_source']})",
    )
    return table


def _pool_rows(table: Table, pool: dict[str, Any], *, several: bool) -> None:
    """One worker pool's Deployment and ScaledObject (and, among several, whether it is held)."""
    deployment, so = pool["deployment"], pool["scaled_object"]
    if deployment.get("error"):
        dep_state = escape(f"unreadable: {deployment['error']}")
    elif deployment.get("found"):
        dep_state = (
            f"replicas {deployment['replicas']} (running {deployment['current_replicas']}, "
            f"ready {deployment['ready_replicas']})"
        )
        if pool.get("queues") is not None:
            dep_state += escape(f"; queues {', '.join(pool['queues'])}")
    else:
        dep_state = "not found"
    if so.get("error"):
        so_state = escape(f"unreadable: {so['error']}")
    elif so.get("keda_installed") is False:
        so_state = "KEDA not installed"
    elif so.get("found"):
        paused = so.get("paused_replicas")
        so_state = f"min {so['min_replicas']}, max {so['max_replicas']}" + (
            f", paused at {paused}" if paused is not None else ", paused" if so["paused"] else ""
        )
    else:
        so_state = "none"
    if several and pool["held_at_zero"]:
        dep_state += " - held at zero"
    table.add_row(f"Deployment {deployment['name']}", dep_state)
    table.add_row(f"ScaledObject {so['name']}", so_state)


def _failures(report: StatusReport) -> Table:
    table = Table(title=f"Recent failures ({len(report.failures)})", title_justify="left")
    for column in ("finished", "task", "task id", "error"):
        table.add_column(column, no_wrap=column in ("finished", "task id"))
    for failure in report.failures:
        table.add_row(
            (failure.finished_at or "-")[:19],
            escape(failure.task),
            escape(failure.task_id),
            escape(f"{failure.error_type}: {failure.error_message}"),
        )
    if not report.failures:
        table.add_row("-", "(none)", "-", "-")
    return table


def run(*, as_json: bool, failures: int) -> int:
    """Print the report (rich tables, or JSON); returns the exit status."""
    try:
        settings = Settings()
        settings.check()
        report = collect(settings, failures=failures)
    except (ValueError, StatusUnavailable) as exc:
        print(f"tasklane status: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        render(report)
    return 0
