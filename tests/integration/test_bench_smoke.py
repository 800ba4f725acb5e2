"""`python -m scripts.bench --quick` (what `make bench` runs, at smoke-test size) runs every
benchmark to the end against its own redis-server, Celery workers and uvicorn servers, prints a
numeric ratio for each row and writes a complete JSON file. Timings are never asserted: these
machines are too noisy for that, and a missed target is a finding, not a failure."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.harness.processes import REPO_ROOT, clean_environment

pytestmark = pytest.mark.integration

#: Every row the benchmark must produce, by JSON key and by the name it prints.
EXPECTED = {
    "a_celery_submit": "(a) submit, celery executor",
    "b_submit_many": "(b) submit_many vs .delay() loop",
    "c_e2e_worker": "(c) end-to-end no-op, 1 worker c=2",
    "d_http_throughput": "(d) HTTP submit throughput",
    "d_http_p99": "(d) HTTP submit p99 latency",
    "e_dead_pool_detection": "(e) dead-pool detection",
    "e_new_worker_detection": "(e) new-worker detection",
    "f_idle_rss_single": "(f) api idle RSS, single mode",
    "f_idle_rss_scaled": "(f) api idle RSS, scaled mode",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, (
        f"exit {completed.returncode}\nstdout:\n{completed.stdout}\n"
        f"stderr:\n{completed.stderr[-6000:]}"
    )
    return completed.stdout, json.loads(out.read_text()), out


def test_every_benchmark_prints_a_numeric_ratio(quick_run: tuple[str, dict, Path]) -> None:
    stdout, _, _ = quick_run
    for name in EXPECTED.values():
        row = next((line for line in stdout.splitlines() if line.startswith(name)), None)
        assert row is not None, f"no row for {name!r} in:\n{stdout}"
        ratio = re.search(r"\s(\d+\.\d+)x\s", row)
        assert ratio is not None, f"no numeric ratio in {row!r}"
        assert re.search(r"\s(yes|NO)$", row), f"no met column in {row!r}"


def test_json_file_is_complete(quick_run: tuple[str, dict, Path]) -> None:
    _, document, _ = quick_run
    assert document["complete"] is True
    assert document["errors"] == {}
    assert document["meta"]["profile"] == "quick"
    results = {result["key"]: result for result in document["results"]}
    assert set(results) == set(EXPECTED)
    for key, result in results.items():
        assert result["name"] == EXPECTED[key]
        for field in ("tasklane", "ratio"):
            value = result[field]
            assert isinstance(value, int | float), (key, field, value)
            assert math.isfinite(value), (key, field, value)
        assert result["baseline"] is None or math.isfinite(result["baseline"])
        assert isinstance(result["met"], bool)
        assert result["target"]["kind"] in ("min", "max")
        assert result["ratio_means"]
        assert result["samples"]["tasklane"], key
