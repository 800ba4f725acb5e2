"""Multiprocess exposition: the launch commands' folder preparation, one pod-wide scrape over
several real processes, dead processes' live gauges swept, broker_up only where it is read.

prometheus_client picks its storage at import, so every process that writes samples here is a
real child Python started with PROMETHEUS_MULTIPROC_DIR set; the scrape side runs in pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.core.metrics_dir import ENV_VAR, prepare_multiprocess_dir, use_multiprocess_dir
from app.core.metrics_exposition import PodCollector, sweep_dead_processes
from scripts.harness.processes import REPO_ROOT, clean_environment, run_python

WRITER = textwrap.dedent(
    """
    import sys
    from app.core.tasks import metrics
    metrics.TASKS_FINISHED.labels(task="mp", executor="celery", status="SUCCESS").inc({count})
    metrics.TASKS_IN_PROGRESS.labels(executor="celery").set({in_progress})
    print("written", flush=True)
    if {linger}:
        sys.stdin.read()  # stay alive until the test closes stdin
    """
)


def write_samples(
    folder: Path, *, count: int, in_progress: int, linger: bool = False
) -> subprocess.Popen[str]:
    """A real process writing samples to `folder`; with linger it stays alive until
    .stdin is closed."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER.format(count=count, in_progress=in_progress, linger=linger),
        ],
        cwd=REPO_ROOT,
        env=clean_environment(**{ENV_VAR: str(folder)}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "written"
    if not linger:
        process.wait(timeout=30)
    return process


def scrape(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    PodCollector(registry, folder)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


FINISHED = (
    "tasklane_tasks_finished_total",
    (("executor", "celery"), ("status", "SUCCESS"), ("task", "mp")),
)
IN_PROGRESS = ("tasklane_tasks_in_progress", (("executor", "celery"),))


def test_one_scrape_sums_every_process_and_drops_dead_ones_live_gauges(tmp_path: Path) -> None:
    live = write_samples(tmp_path, count=3, in_progress=2, linger=True)
    try:
        dead = write_samples(tmp_path, count=4, in_progress=5)  # exited: a SIGKILLed child
        samples = scrape(tmp_path)

        # Counts of every process, the dead one's included: they happened.
        assert samples[FINISHED] == 7
        # In progress: only the live process's 2; the dead one's 5 were swept.
        assert samples[IN_PROGRESS] == 2
        assert not list(tmp_path.glob(f"gauge_livesum_{dead.pid}.db"))
        assert list(tmp_path.glob(f"gauge_livesum_{live.pid}.db"))
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=30)


def test_sweep_leaves_live_processes_and_counters_alone(tmp_path: Path) -> None:
    dead = write_samples(tmp_path, count=1, in_progress=1)
    assert sweep_dead_processes(tmp_path) == [dead.pid]
    assert (tmp_path / f"counter_{dead.pid}.db").exists()
    assert sweep_dead_processes(tmp_path) == []


def test_prepare_removes_only_sample_files(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    write_samples(folder, count=2, in_progress=1)
    (folder / "notes.txt").write_text("keep me")
    (folder / "counter.db.bak").write_text("not ours")

    removed = prepare_multiprocess_dir(folder)

    assert removed >= 2  # the writer's counter and gauge files
    assert sorted(p.name for p in folder.iterdir()) == ["counter.db.bak", "notes.txt"]
    assert scrape(folder).get(FINISHED) is None  # a restart starts from zero


def test_use_multiprocess_dir_creates_one_only_when_several_processes_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert use_multiprocess_dir(required=False, prefix="t-") is None
    assert ENV_VAR not in os.environ

    made = use_multiprocess_dir(required=True, prefix="tasklane-test-")
    assert made is not None
    assert made.is_dir()
    assert os.environ[ENV_VAR] == str(made)
    made.rmdir()

    given = tmp_path / "given"
    monkeypatch.setenv(ENV_VAR, str(given))
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    assert use_multiprocess_dir(required=False, prefix="t-") == given
    assert list(given.iterdir()) == []


def test_broker_up_exists_only_in_processes_that_read_the_broker(tmp_path: Path) -> None:
    """A worker or a single-mode api never reads the broker: it must not export 0."""
    script = textwrap.dedent(
        """
        from prometheus_client import REGISTRY, generate_latest
        from app.core.tasks import metrics
        print("before:", b"tasklane_broker_up" in generate_latest(REGISTRY))
        metrics.set_broker_up(True)
        print("after:", REGISTRY.get_sample_value("tasklane_broker_up"))
        """
    )
    out = run_python(script, check=True).stdout.splitlines()
    assert out == ["before: False", "after: 1.0"]
