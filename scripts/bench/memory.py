"""Benchmark (f): resident memory of an idle api process.

`tasklane serve` is started as `make run` starts it (single mode: nothing configured but the
bench tasks), sent one request, left idle, then its VmRSS is read from /proc/<pid>/status. The
bare FastAPI app of benchmark (d) goes through the same steps as the reference for what
Python + FastAPI + uvicorn cost before tasklane adds anything. A scaled-mode api (hybrid
executor, Redis store: it also imports Celery and kombu) is measured as well, against the
same 120 MB target, because that is what the chart's api Deployment runs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import urllib.request
from typing import Any

from scripts.bench.common import Profile, Result, Target, Workspace, log, redis_server
from scripts.bench.servers import BareServer, rss_mb, tasklane_server
from scripts.harness.processes import child_pids

TARGET_MB = 120.0


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


async def _idle_rss(url: str, pid: int, idle: float, mode: str | None) -> float:
    """RSS after one request and `idle` seconds of nothing (uvicorn's single process is the
    server itself; a child would be counted too). For tasklane the one request also checks
    the mode the server reports, so a misconfigured start cannot pass for the other mode."""
    if mode is None:
        await asyncio.to_thread(_get, f"{url}/healthz")
    else:
        reported = (await asyncio.to_thread(_get, f"{url}/api/tasks/executors"))["mode"]
        if reported != mode:
            raise RuntimeError(f"{url} runs in {reported} mode, expected {mode}")
    await asyncio.sleep(idle)
    return rss_mb(pid) + sum(rss_mb(child) for child in child_pids(pid))


async def run(profile: Profile, workspace: Workspace) -> list[Result]:
    bare: list[float] = []
    single: list[float] = []
    scaled: list[float] = []
    log(f"(f) idle RSS: {profile.rounds} round(s), {profile.idle_seconds:g} s idle each")
    with redis_server() as server:
        for index in range(profile.rounds):
            # One at a time, so each idles on a quiet machine.
            for name, samples in (("bare", bare), ("single", single), ("scaled", scaled)):
                log_path = workspace.log_path(f"rss-{name}-{index}")
                if name == "bare":
                    process = BareServer(log_path)
                elif name == "single":
                    process = tasklane_server(log_path)
                else:
                    process = tasklane_server(
                        log_path,
                        CELERY_BROKER_URL=server.url,
                        REDIS_URL=server.url,
                        TASKLANE_EXECUTOR="hybrid",
                    )
                mode = None if name == "bare" else name
                try:
                    pid = process.process.pid
                    samples.append(await _idle_rss(process.url, pid, profile.idle_seconds, mode))
                finally:
                    process.kill()
    base = statistics.median(bare)
    return [
        _rss_result("f_idle_rss_single", "(f) api idle RSS, single mode", single, base),
        _rss_result("f_idle_rss_scaled", "(f) api idle RSS, scaled mode", scaled, base),
    ]


def _rss_result(key: str, name: str, samples: list[float], bare_mb: float) -> Result:
    value = statistics.median(samples)
    return Result(
        key=key,
        name=name,
        unit="MB",
        baseline=bare_mb,
        tasklane=value,
        ratio=value / TARGET_MB,
        ratio_means=(
            f"idle VmRSS (MB, 10^6 bytes) / the {TARGET_MB:g} MB target; <= 1 meets it. "
            "Baseline column: the bare FastAPI app under the same uvicorn, for reference"
        ),
        target=Target("max", 1.0),
        target_text=f"<= {TARGET_MB:g} MB",
        samples={"tasklane": samples},
        when_missed="see the modules the api imports at start-up (python -X importtime)",
    )
