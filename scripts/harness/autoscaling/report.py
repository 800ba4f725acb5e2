"""Write a ScenarioResult as files: the replica timeline as CSV and as a PNG plot (matplotlib,
Agg backend: no display here), and the whole result as JSON (pods and tasks included)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from scripts.harness.autoscaling.harness import ScenarioResult

#: Timeline columns, in order.
CSV_COLUMNS = ("time", "queued", "active", "value", "desired", "replicas", "ready")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFiles:
    csv: Path
    png: Path
    json: Path


def write_report(result: ScenarioResult, folder: Path) -> ReportFiles:
    """Write timeline.csv, timeline.png and run.json into `folder` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        csv=folder / "timeline.csv", png=folder / "timeline.png", json=folder / "run.json"
    )
    write_csv(result, files.csv)
    write_png(result, files.png)
    files.json.write_text(result.to_json())
    return files


def write_csv(result: ScenarioResult, path: Path) -> None:
    with path.open("w", newline="") as output:
        writer = csv.writer(output)
        writer.writerow(CSV_COLUMNS)
        for sample in result.samples:
            writer.writerow([f"{sample.time:.3f}", *(getattr(sample, c) for c in CSV_COLUMNS[1:])])


def write_png(result: ScenarioResult, path: Path) -> None:
    """Load on top (queued, running, their sum), replica counts below, SIGTERMs marked."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display on these machines
    from matplotlib import pyplot

    times = [s.time for s in result.samples]
    figure, (load, pods) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    settings = result.autoscaling
    figure.suptitle(
        f"{settings['name']}: scenario {result.scenario}, {len(result.tasks)} tasks, "
        f"target {settings['target']:g}/replica, max {settings['max_replicas']}, "
        f"cooldown {settings['cooldown_period']:g} s"
    )
    load.step(times, [s.queued for s in result.samples], where="post", label="queued")
    load.step(times, [s.active for s in result.samples], where="post", label="active (running)")
    load.step(
        times, [s.value for s in result.samples], where="post", linestyle=":", label="formula value"
    )
    load.set_ylabel("tasks")
    load.legend(loc="upper right")
    load.grid(alpha=0.3)

    pods.step(
        times, [s.desired for s in result.samples], where="post", linestyle="--", label="desired"
    )
    pods.step(times, [s.replicas for s in result.samples], where="post", label="replicas")
    pods.step(
        times, [s.ready for s in result.samples], where="post", linestyle=":", label="ready workers"
    )
    cooldown = _cooldown_span(result)
    if cooldown is not None:
        pods.axvspan(*cooldown, color="tab:blue", alpha=0.07, label="cooldown (idle)")
    for pod in result.pods:
        if pod.sigterm_at is not None:
            colour = "tab:red" if pod.busy_at_sigterm else "tab:gray"
            pods.axvline(pod.sigterm_at, color=colour, alpha=0.4, linewidth=1)
    pods.axhline(settings["max_replicas"], color="black", alpha=0.3, linewidth=0.8)
    pods.set_ylabel("worker replicas")
    pods.set_xlabel("seconds (SIGTERM: grey = idle worker, red = busy worker)")
    pods.yaxis.get_major_locator().set_params(integer=True)
    pods.legend(loc="upper right")
    pods.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _cooldown_span(result: ScenarioResult) -> tuple[float, float] | None:
    """From the last poll with load to the poll that scaled to zero (KEDA's cooldown)."""
    samples = result.samples
    zero = next(
        (
            i
            for i in range(len(samples) - 1, 0, -1)
            if samples[i].replicas == 0 < samples[i - 1].replicas
        ),
        None,
    )
    if zero is None:
        return None
    busy = [s.time for s in samples[:zero] if s.value > result.autoscaling["activation_target"]]
    return (busy[-1], samples[zero].time) if busy else None
