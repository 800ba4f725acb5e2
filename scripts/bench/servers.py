"""The HTTP servers benchmarks (d) and (f) start: `tasklane serve` and the bare FastAPI app.

`tasklane serve` comes from scripts.harness.processes.ServerProcess unchanged; the bare app gets
the same treatment here (free loopback port, own session, log file, clean environment), started
with uvicorn's own command line at uvicorn's defaults, which are what `tasklane serve` passes
too: one process, loop and http "auto" (uvloop, httptools), access log on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from scripts.harness.processes import (
    REPO_ROOT,
    ServerProcess,
    clean_environment,
    free_port,
    wait_for_port,
)

BENCH_TASK_MODULES = "scripts.bench.tasks"


class BareServer:
    """`python -m uvicorn scripts.bench.bare_app:app` on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "scripts.bench.bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "info",
        ]
        with log_path.open("wb") as output:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=clean_environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=30, process=self.process)
        except Exception:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def tasklane_server(log_path: Path, **env: str) -> ServerProcess:
    """`tasklane serve` with the bench tasks loaded; env adds settings (empty: single mode,
    in-process runner and memory store, exactly what `make run` starts)."""
    return ServerProcess(
        clean_environment(TASKLANE_TASK_MODULES=BENCH_TASK_MODULES, **env), log_path
    )


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (10^6 bytes: the stricter reading of a "120 MB"
    target), from /proc/<pid>/status, whose VmRSS "kB" are KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS line for pid {pid}")
